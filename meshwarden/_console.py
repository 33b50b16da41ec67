"""The web console (`server --ui HOST:PORT`, `up DIR --ui HOST:PORT`): a read-only page served
by the control plane, and the JSON endpoints it reads — usable by scripts too:

  GET /api/graph?minutes=15[&namespace=NS][&identity=ID][&decision=allow|deny|would-deny]
  GET /api/edge?id=EDGE_ID[&minutes=15]   one edge with its newest records
  GET /api/explain?to=NS/NAME&port=N[&from=SPIFFE_ID|&fromWorkload=NS/NAME][&sourceIp=IP]
                  [&method=M][&path=P][&host=H][&headers=NAME=VALUE lines][&jwtClaims=JSON]
  GET /api/policies     documents per namespace, rule line ranges, file text, check diagnostics
  GET /api/workload?ref=NS/NAME   identity, SVID expiry, sidecar sync state, its policies
  GET /api/history      the store's revisions;  GET /api/diff?from=N[&to=M]  as `diff -o json`
  GET /api/status       the /healthz report;  GET /api/flows   as /flows
  GET /api/config       trace URL template, what this control plane can show
  GET /api/events       server-sent events: `flow` (a record), `policies` (version change)

Loopback only unless `allow_remote`; a request whose Host is not a loopback name is refused
while bound to loopback (DNS rebinding). Only GET. No secrets: keys, tokens and private JWKS
members are in none of the replies."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from meshwarden._console_graph import (
    GraphQuery,
    edge,
    graph,
    sidecar_sync,
    target_of,
    workload_json,
)
from meshwarden._console_policies import policies_view
from meshwarden._flows import FlowLog, FlowQuery
from meshwarden._health import HealthEndpoint, Reply
from meshwarden._policies import Policies
from meshwarden._policy_store import (
    PolicyStore,
    RevisionNotFound,
    StoreCorrupt,
    StoreUnavailable,
)
from meshwarden.engine import CompiledMesh, load

DiffJson = Callable[[dict[str, bytes], dict[str, bytes]], dict[str, Any]]
"""(files of one revision, files of another) → `meshwarden diff -o json`'s changes; ValueError
when a revision does not compile."""

ExplainJson = Callable[[CompiledMesh, Mapping[str, str]], dict[str, Any]]
"""(the running mesh, the query parameters) → `meshwarden explain -o json`'s object; raises
ValueError naming a bad parameter."""

EVENT_POLL_SECONDS = 0.25  # how often an event stream looks for a new policy version
STATIC = {  # path → (file in the package's console/ folder, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/static/console.css": ("console.css", "text/css; charset=utf-8"),
    "/static/cytoscape.min.js": ("vendor/cytoscape.min.js", "text/javascript; charset=utf-8"),
}
SECURITY_HEADERS = (
    # Cytoscape.js sets inline styles on its canvas elements: 'unsafe-inline' for styles only
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
)


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP literal (`127.0.0.0/8`, `[::1]`)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ConsoleOptions:
    listen: str = "127.0.0.1:0"
    allow_remote: bool = False  # bind to a non-loopback address (read-only, unauthenticated)
    trace_url: str | None = None  # a trace UI link with {traceId}, e.g. Jaeger's /trace/{traceId}
    explain: ExplainJson | None = None  # `meshwarden explain`'s code (the CLI passes it in)
    diff: DiffJson | None = None  # `meshwarden diff`'s code, for the store's revisions

    def problem(self) -> str:
        """Why these options cannot be served ("" when they can)."""
        host = self.listen.rpartition(":")[0]
        if not self.allow_remote and not is_loopback(host):
            return (
                f"--ui {self.listen}: not a loopback address; the console is read-only but "
                "unauthenticated, so add --ui-allow-remote to serve it on other "
                "interfaces (and see docs/security.md, 'Web console')"
            )
        if self.trace_url is not None and "{traceId}" not in self.trace_url:
            return f"--ui-trace-url {self.trace_url!r}: put {{traceId}} where the trace id goes"
        return ""


@dataclass
class ConsoleSources:
    """Where the console reads from: the control plane's own objects, nothing copied."""

    policies: Policies
    flows: FlowLog
    status: Callable[[], dict[str, Any]]  # the /healthz report
    svid_expiry: Callable[[str], str | None] = lambda spiffe_id: None  # known where an agent is
    store: PolicyStore | None = None  # policy revisions (history, diff) in store mode


class Console:
    def __init__(self, options: ConsoleOptions, sources: ConsoleSources) -> None:
        self.options, self.sources = options, sources
        host, _, port = options.listen.rpartition(":")
        self.endpoint = HealthEndpoint(host.strip("[]"), int(port), sources.status)
        self.endpoint.headers = SECURITY_HEADERS
        if not options.allow_remote:
            self.endpoint.guard = _loopback_host_only
        routes = self.endpoint.routes
        routes.pop("/healthz")
        routes.update({path: _static(*where) for path, where in STATIC.items()})
        routes.update(
            {
                "/api/edge": self._edge,
                "/api/explain": self._explain,
                "/api/workload": self._workload,
                "/api/status": lambda params: Reply.json(self.sources.status()),
                "/api/flows": sources.flows.route,
                "/api/config": self._config,
                "/api/events": lambda params: Reply(
                    b"", content_type="text/event-stream", stream=self._events()
                ),
            }
        )
        self.endpoint.async_routes.update(
            {
                "/api/graph": self._graph,
                "/api/policies": self._policies,
                "/api/history": self._history,
                "/api/diff": self._diff,
            }
        )
        self._checked: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None

    @property
    def url(self) -> str:
        host = self.endpoint.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.endpoint.port}/"

    async def start(self) -> None:
        await self.endpoint.start()

    async def stop(self) -> None:
        await self.endpoint.stop()

    def _config(self, params: dict[str, str]) -> Reply:
        mesh = self.sources.policies.mesh
        return Reply.json(
            {
                "traceUrl": self.options.trace_url,
                "trustDomain": str(mesh.registry.trust_domain) if mesh else None,
                "policyVersion": mesh.version if mesh else None,
                "explain": self.options.explain is not None,
                "history": self.sources.store is not None,  # revisions live in the store only
            }
        )

    async def _graph(self, params: dict[str, str]) -> Reply:
        try:
            query = GraphQuery.from_params(params)
        except ValueError as exc:
            return Reply.json({"error": str(exc)}, "400 Bad Request")
        flows = self.sources.flows.query(FlowQuery(since=query.minutes * 60))
        status = self.sources.status()
        mesh = self.sources.policies.mesh
        registry = mesh.registry if mesh else None

        def build() -> dict[str, Any]:
            view = graph(registry, flows, query, status)
            version = mesh.version if mesh else None
            return {"policyVersion": version, "status": status.get("status"), **view}

        return await _off_loop(build)

    def _edge(self, params: dict[str, str]) -> Reply:
        try:
            minutes = GraphQuery.from_params(params).minutes
        except ValueError as exc:
            return Reply.json({"error": str(exc)}, "400 Bad Request")
        edge_id = params.get("id", "")
        window = FlowQuery(workload=target_of(edge_id) or None, since=minutes * 60)
        flows = self.sources.flows.query(window) if window.workload else []
        found = edge(self.sources.policies.registry, flows, edge_id)
        if found is None:
            return Reply.json({"error": f"no edge {edge_id!r} in the window"}, "404 Not Found")
        return Reply.json(found)

    def _explain(self, params: dict[str, str]) -> Reply:
        mesh = self.sources.policies.mesh
        if self.options.explain is None or mesh is None:
            why = "no valid policies loaded" if mesh is None else "explain is not wired here"
            return Reply.json({"error": why}, "503 Service Unavailable")
        try:
            return Reply.json(self.options.explain(mesh, params))
        except ValueError as exc:
            return Reply.json({"error": str(exc)}, "400 Bad Request")

    def _workload(self, params: dict[str, str]) -> Reply:
        ref = params.get("ref", "")
        mesh = self.sources.policies.mesh
        workload = mesh.registry.workloads.get(ref) if mesh else None
        if mesh is None or workload is None:
            return Reply.json({"error": f"no such workload {ref!r}"}, "404 Not Found")
        status = self.sources.status()
        return Reply.json(
            {
                **workload_json(workload),
                "svidExpires": self.sources.svid_expiry(workload.identity)
                or _svid_expiry(status, ref),
                **sidecar_sync(ref, status),
                "policies": sorted(mesh.by_workload.get(ref, ())),
            }
        )

    async def _policies(self, params: dict[str, str]) -> Reply:
        return await _off_loop(self._policies_json)

    async def _history(self, params: dict[str, str]) -> Reply:
        """The store's revisions, newest first, and the head replicas serve."""
        store = self.sources.store
        if store is None:
            return _no_store()
        try:
            head, _ = await store.head()
            revisions = await store.history()
        except (StoreUnavailable, StoreCorrupt) as exc:
            return Reply.json({"error": f"the store: {exc}"}, "503 Service Unavailable")
        return Reply.json({"head": head, "revisions": [r.to_json() for r in reversed(revisions)]})

    async def _diff(self, params: dict[str, str]) -> Reply:
        """`meshwarden diff FROM [TO]` (TO: the head) on the store's revisions."""
        store, diff = self.sources.store, self.options.diff
        if store is None or diff is None:
            return _no_store()
        try:
            first = int(params["from"])
            second = int(params["to"]) if params.get("to") else (await store.head())[0]
            before = await store.contents(await store.revision(first))
            after = await store.contents(await store.revision(second))
            changes = await asyncio.to_thread(diff, before, after)
        except (KeyError, ValueError) as exc:
            why = "from (a revision number) is required" if isinstance(exc, KeyError) else exc
            return Reply.json({"error": str(why)}, "400 Bad Request")
        except RevisionNotFound as exc:
            return Reply.json({"error": str(exc)}, "404 Not Found")
        except (StoreUnavailable, StoreCorrupt) as exc:
            return Reply.json({"error": f"the store: {exc}"}, "503 Service Unavailable")
        return Reply.json({"from": first, "to": second, **changes})

    def _policies_json(self) -> dict[str, Any]:
        policies = self.sources.policies
        on_disk = self.sources.store is None and policies.directory.is_dir()
        compiled = policies.contents if on_disk else None
        view = policies_view(policies.mesh, compiled.by_path() if compiled else None)
        status = policies.status
        key = (status.version, status.loaded, status.rejected)
        if self._checked is None or self._checked[0] != key:
            found = load([policies.directory]).diagnostics if on_disk else []
            self._checked = (key, [d.to_json() for d in found])
        return {
            **view,
            "directory": str(policies.directory),
            "rejectedChange": status.errors,
            "diagnostics": self._checked[1],
            "history": self.sources.store is not None,  # then GET /api/history
        }

    async def _events(self) -> AsyncIterator[bytes]:
        """`flow` events as records arrive, `policies` when the version or a rejection changes,
        a comment line on quiet streams (to notice clients that went away)."""
        records = self.sources.flows.follow(FlowQuery(since=0))
        pending: asyncio.Future[Any] = asyncio.ensure_future(anext(records))
        last: tuple[Any, ...] | None = None
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=EVENT_POLL_SECONDS)
                if done:
                    flow = pending.result()
                    pending = asyncio.ensure_future(anext(records))
                    yield b": quiet\n\n" if flow is None else _event("flow", flow.to_json())
                status = self.sources.policies.status
                now = (status.version, status.rejected)
                if now != last:
                    last = now
                    yield _event("policies", {"version": status.version, "errors": status.errors})
        finally:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            await records.aclose()  # type: ignore[attr-defined]


def _svid_expiry(status: dict[str, Any], ref: str) -> str | None:
    """The SVID expiry the /healthz report gives for a sidecar, where it gives one."""
    sidecar = status.get("sidecars", {}).get(ref)
    svid = sidecar.get("svid") if isinstance(sidecar, dict) else None
    return svid.get("expiry") if isinstance(svid, dict) else None


async def _off_loop(build: Callable[[], Any]) -> Reply:
    """A reply built and encoded in a worker thread (a large graph or directory takes a while;
    the loop keeps serving xDS meanwhile)."""
    return Reply(await asyncio.to_thread(lambda: json.dumps(build(), indent=2).encode()))


def _no_store() -> Reply:
    return Reply.json(
        {
            "error": "no policy store: history and diff come with server --store; "
            "this control plane reads a directory"
        },
        "404 Not Found",
    )


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _loopback_host_only(headers: dict[str, str]) -> Reply | None:
    host = headers.get("host", "")
    name = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
    if is_loopback(name):
        return None
    return Reply.json(
        {
            "error": f"Host {host!r} is not a loopback name; this console serves "
            "loopback only (see --ui-allow-remote)"
        },
        "403 Forbidden",
    )


def _static(file: str, content_type: str) -> Callable[[dict[str, str]], Reply]:
    def serve(params: dict[str, str]) -> Reply:
        try:
            body = (resources.files("meshwarden") / "console" / file).read_bytes()
        except OSError:
            return Reply(
                f"{file} is missing: build the console's assets with `make console`".encode(),
                "404 Not Found",
                "text/plain",
            )
        return Reply(body, content_type=content_type)

    return serve
