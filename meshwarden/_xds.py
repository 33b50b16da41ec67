"""The control plane's xDS side: the last good compiled mesh → per-workload snapshots in the
cache the ADS server watches; sidecars are admitted by the SPIFFE ID their mTLS proves."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meshwarden._flows import FlowLog, engine_attribution
from meshwarden._policies import Policies, collection_paused
from meshwarden.engine import AuthorizationPlan
from meshwarden.xds import (
    EXT_AUTHZ_GRPC_CLUSTER,
    EXT_AUTHZ_HTTP_CLUSTER,
    XDS_CLUSTER,
    AccessLogReceiver,
    AggregatedDiscovery,
    Authorization,
    AuthzHttpFront,
    Snapshot,
    SnapshotBuilder,
    SnapshotCache,
    TelemetryObserver,
    TracingTarget,
    TranslationContext,
    access_log_handler,
    ads_handler,
    authorization_handler,
    ext_authz_grpc_declared,
    ext_authz_http_declared,
    peer_certificate,
    peer_spiffe_id,
    registered_workload,
    registry_authorizer,
    sidecar_sync,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Nack:
    """A configuration a sidecar rejected and has not replaced by one it accepted."""

    workload: str
    type: str  # the resource type's short name, e.g. Listener
    version: str
    message: str  # Envoy's error_detail

    def __str__(self) -> str:
        return (
            f"the sidecar of {self.workload} rejected {self.type} version "
            f"{self.version}: {self.message}"
        )

    def to_json(self) -> dict[str, str]:
        return {
            "workload": self.workload,
            "type": self.type,
            "version": self.version,
            "error": self.message,
        }


class NackTracker:
    """A `StreamObserver` of the NACKs still standing: one per (workload, type) until that type
    is ACKed again. Each new NACK is logged at ERROR."""

    def __init__(self) -> None:
        self._current: dict[tuple[str, str], Nack] = {}

    def on_connect(self, node: str) -> None:
        pass

    def on_response(self, node: str, type_url: str, version: str, nonce: str = "") -> None:
        pass

    def on_disconnect(self, node: str) -> None:
        pass

    def on_nack(self, node: str, type_url: str, version: str, error_message: str) -> None:
        nack = Nack(node, type_url.rsplit(".", 1)[-1], version, error_message)
        if self._current.get((node, type_url)) != nack:
            log.error("%s", nack)
        self._current[(node, type_url)] = nack

    def on_ack(self, node: str, type_url: str, version: str) -> None:
        self._current.pop((node, type_url), None)

    def standing(self, nodes: frozenset[str]) -> list[Nack]:
        """Standing NACKs of `nodes` (workloads no longer served are forgotten)."""
        for key in [k for k in self._current if k[0] not in nodes]:
            del self._current[key]
        return [self._current[k] for k in sorted(self._current)]


class MeshXds:
    def __init__(
        self,
        policies: Policies,
        tracing: TracingTarget | None = None,
        flows: FlowLog | None = None,
        flow_log_sample: float = 100.0,
        ext_authz_http: bool = False,
    ) -> None:
        """`ext_authz_http`: this control plane serves the ext_authz front (`ext_authz_front`),
        so workloads with `extAuthz.transport: http` can be configured, and the gRPC Check of
        a sidecar whose bootstrap has the front's h2 cluster goes there (the others' over the
        ADS connection, as before the front answered gRPC)."""
        self.policies = policies
        self.flows = flows or FlowLog()  # sidecars' access logs (the bootstrap's xDS cluster)
        self.cache = SnapshotCache()
        self.jwt_bundle: Callable[[str], str | None] = lambda trust_domain: None
        # SPIFFE ID → expiry of the newest X509-SVID the CA issued for it (set by the server)
        self.issued_until: Callable[[str], dt.datetime | None] = lambda spiffe_id: None
        self.replica = ""  # which control plane this is, for `meshwarden status`
        context = TranslationContext(
            jwt_bundle=self._bundle,
            tracing=tracing,
            flow_log_cluster=XDS_CLUSTER,
            flow_log_allowed_percent=flow_log_sample,
            ext_authz_cluster=XDS_CLUSTER,
            ext_authz_http_cluster=EXT_AUTHZ_HTTP_CLUSTER if ext_authz_http else None,
            ext_authz_grpc_cluster=EXT_AUTHZ_GRPC_CLUSTER if ext_authz_http else None,
            ext_authz_grpc_declared=self._grpc_front_declared,
        )
        self._declared_changed: set[str] = set()  # sidecars whose snapshot must follow that
        self._rebuilding: asyncio.Task[None] | None = None
        self.builder = SnapshotBuilder(context)
        # one decider (and decision cache) for gRPC Check and the HTTP front
        self.authorization = Authorization(
            registered_workload(lambda: self.policies.mesh, _caller_identity)
        )
        self._building = threading.Lock()
        self.build_errors: dict[str, str] = {}  # workload → why its snapshot could not be built
        self.pushes = 0
        self._nacks = NackTracker()
        self.cache.observe(self._nacks)
        self.cache.observe(
            TelemetryObserver(
                parent=lambda: self.policies.trace_context,
                policy_version=self.builder.policy_versions.get,
            )
        )

    def _bundle(self, trust_domain: str) -> str | None:
        return self.jwt_bundle(trust_domain)

    def _grpc_front_declared(self, workload: str) -> bool:
        """Whether the sidecar of `workload` said its bootstrap has the front's h2 cluster (on
        its newest ADS stream); read by translation, in the build thread too."""
        status = self.cache.known_status(workload)
        return status is not None and status.ext_authz_grpc

    def _declared(self, node: str, envoy_node: Any) -> Awaitable[None] | None:
        """Note what the bootstrap of a sidecar opening a stream declares. When its gRPC Check
        should go elsewhere than its snapshot says (the first stream of a sidecar after a
        restart of this control plane, or a sidecar bootstrapped anew with or without the
        front's port), that workload's snapshot is rebuilt off the loop — one build for every
        sidecar that changed meanwhile — and the stream's first response waits for it: the
        sidecar never gets a configuration for the other bootstrap (nor, reconnecting after a
        restart, a change: the same versions as before)."""
        status = self.cache.status(node)
        status.ext_authz_http = ext_authz_http_declared(envoy_node)
        grpc = ext_authz_grpc_declared(envoy_node)
        if grpc == status.ext_authz_grpc:
            return None
        status.ext_authz_grpc = grpc
        if self.builder.context.ext_authz_grpc_cluster is None:
            return None
        self._declared_changed.add(node)
        if self._rebuilding is None or self._rebuilding.done():
            self._rebuilding = asyncio.get_running_loop().create_task(self._rebuild_declared())
        return _built(self._rebuilding)

    async def _rebuild_declared(self) -> None:
        while self._declared_changed:
            nodes, self._declared_changed = self._declared_changed, set()
            mesh = self.policies.mesh
            plans = mesh.plans if mesh is not None else {}
            asking = frozenset(
                n for n in nodes if n in plans and plans[n].enforcement == "ext-authz"
            )
            if asking:
                await self.publish_off_loop(asking)

    def publish(self, workloads: frozenset[str] | None) -> None:
        """Rebuild the snapshots of `workloads` (all when None) from the last good mesh, here
        and now (start-up, tests); a running control plane uses `publish_off_loop`."""
        self._apply(self._build(workloads))

    async def publish_off_loop(self, workloads: frozenset[str] | None) -> None:
        """`publish`, building (translating, encoding) in a worker thread: a 10,000-rule mesh
        takes seconds to build, while the loop keeps serving ADS, the node API and /healthz."""
        self._apply(await asyncio.to_thread(self._build, workloads))

    def _build(self, workloads: frozenset[str] | None) -> dict[str, Snapshot | None] | None:
        """Snapshots of `workloads` (None: a workload to forget), or None without a mesh. One
        build at a time: the builder's caches are not shared between threads."""
        with self._building, collection_paused():
            mesh = self.policies.mesh
            if mesh is None:
                return None
            wanted = frozenset(mesh.plans) if workloads is None else workloads
            built: dict[str, Snapshot | None] = {}
            for ref in sorted(wanted):
                self.build_errors.pop(ref, None)
                if ref not in mesh.plans:
                    built[ref] = None
                    continue
                try:
                    built[ref] = self.builder.snapshot(mesh, ref)
                except Exception as exc:  # a translation bug: its sidecar keeps the last one
                    log.exception("building the configuration of %s failed", ref)
                    self.build_errors[ref] = (
                        f"{ref}: error: its configuration could not "
                        f"be built; its sidecar keeps the last one: "
                        f"{exc!r}"
                    )
            return built

    def _apply(self, built: dict[str, Snapshot | None] | None) -> None:
        """On the event loop: serve what was built (the cache wakes the streams)."""
        if built is None:
            return
        for ref, snapshot in built.items():
            if snapshot is not None:
                self.cache.set_snapshot(ref, snapshot)
            else:
                self.cache.clear(ref)
        self.pushes += 1

    def add_to(self, server: Any) -> None:
        """Register ADS, the access-log service and ext_authz Check on a grpc.aio server whose
        TLS requires a client certificate (`identities.MtlsEndpoint`): each call's peer is
        the SPIFFE ID in the certificate grpc verified."""

        def registry() -> Any:
            assert self.policies.registry is not None
            return self.policies.registry

        def presented(node: str, context: Any, envoy_node: Any) -> Awaitable[None] | None:
            certificate = peer_certificate(context)
            if certificate is not None:
                self.cache.presented(node, certificate.not_valid_after_utc)
            return self._declared(node, envoy_node)

        ads = AggregatedDiscovery(
            self.cache, registry_authorizer(registry), observer=self.cache, admitted=presented
        )
        server.add_generic_rpc_handlers((ads_handler(ads),))
        flows = AccessLogReceiver(
            self.flows,
            registry_authorizer(registry),
            peer_spiffe_id,
            engine_attribution(lambda: self.policies.mesh),
        )
        server.add_generic_rpc_handlers((access_log_handler(flows),))
        server.add_generic_rpc_handlers((authorization_handler(self.authorization),))

    def ext_authz_front(self) -> AuthzHttpFront:
        """The ext_authz front (HTTP/1.1 for `extAuthz.transport: http`, and gRPC Check on the
        connections ALPN made h2), deciding with the same `Authorization` as gRPC Check on the
        sidecars' listener; serve it with `serve_authz_http` over mTLS (`front_tls`)."""
        return AuthzHttpFront(self.authorization)

    def nacks(self) -> list[Nack]:
        """Configurations some sidecar rejected and has not replaced by an accepted one (for
        /healthz and for `up` to print)."""
        return self._nacks.standing(self.cache.nodes())

    def _svid(self, node: str, presented: dt.datetime | None) -> dict[str, Any]:
        """The sidecar's SVID: what it presented when its ADS stream opened, and the newest
        this control plane issued for its identity since (SDS renews it without a new
        stream); `expiry` is the later of the two."""
        registry = self.policies.registry
        workload = registry.workloads.get(node) if registry is not None else None
        spiffe_id = workload.identity if workload is not None else None
        issued = self.issued_until(spiffe_id) if spiffe_id else None
        known = [t for t in (presented, issued) if t is not None]
        return {
            "spiffeId": spiffe_id,
            "expiry": _iso(max(known)) if known else None,
            "presentedExpiry": _iso(presented),
            "issuedExpiry": _iso(issued),
        }

    def sidecar_problems(self) -> dict[str, str]:
        """Connected sidecars that cannot work as configured, and why (for /healthz
        `sidecarProblems`): ext_authz over HTTP for a sidecar bootstrapped without the HTTP
        front's cluster, whose Envoy accepts the filter but fails every request closed."""
        mesh = self.policies.mesh
        if mesh is None:
            return {}
        statuses = ((node, self.cache.status(node)) for node in self.cache.nodes())
        return {
            node: _NO_HTTP_FRONT
            for node, status in statuses
            if status.streams
            and not status.ext_authz_http
            and node in mesh.plans
            and _asks_http_front(mesh.plans[node])
        }

    def sidecars(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for node in sorted(self.cache.nodes()):
            status = self.cache.status(node)
            out[node] = {
                **sidecar_sync(node, self.cache.snapshot(node), status).to_json(),
                "replica": self.replica,
                "svid": self._svid(node, status.svid_expiry),
                "applied": self.cache.applied(node),
                "streams": status.streams,
                "acked": {t.rsplit(".", 1)[-1]: v for t, v in status.acked.items()},
                "rejections": [
                    {
                        "type": r.type_url.rsplit(".", 1)[-1],
                        "version": r.version,
                        "error": r.error_message,
                    }
                    for r in status.rejections
                ],
            }
        return out


_NO_HTTP_FRONT = (
    "extAuthz.transport is http but its sidecar was bootstrapped without --ext-authz-port: "
    "every request to its HTTP ports fails closed (restart it with --ext-authz-port, the "
    "port of the server's --ext-authz-listen)"
)


def _asks_http_front(plan: AuthorizationPlan) -> bool:
    """Whether the sidecar of `plan` asks the ext_authz HTTP front (an HTTP port under
    ext-authz enforcement with `extAuthz.transport: http`)."""
    return (
        plan.enforcement == "ext-authz"
        and plan.mesh.ext_authz.transport == "http"
        and any(port.is_http for port in plan.workload.ports.values())
    )


async def _built(rebuilding: asyncio.Task[None]) -> None:
    """Wait for a rebuild shared by several streams (one stream going away cancels nothing)."""
    try:
        await asyncio.shield(rebuilding)
    except Exception:  # the stream is served what was there before
        log.exception("rebuilding snapshots for what sidecars' bootstraps declare failed")


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def _caller_identity(caller: Any) -> str | None:
    """Who asks for a decision: a gRPC call's verified peer, or the SPIFFE ID the HTTP front
    read from the connection's verified client certificate (None: no certificate)."""
    return caller if caller is None or isinstance(caller, str) else peer_spiffe_id(caller)
