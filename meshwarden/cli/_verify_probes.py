"""Probes for `meshwarden verify`: real requests through a source workload's sidecar.

A source workload reaches a Service through its upstream listener (`127.0.0.1:localPort`,
opened by its own sidecar, which presents the source's SVID). A probe is one request sent
there; the destination sidecar decides it. What came back is compared with what the engine
decides for the same request to each workload behind the Service (explain), and with the
expectation file if one was given.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass, field
from typing import Any

from meshwarden.cli._common import InputError
from meshwarden.engine import CompiledMesh, Decision, Request, decide

TCP_SETTLE_SECONDS = 1.5  # an allowed tcp connection stays open this long without data


@dataclass(frozen=True, slots=True)
class Probe:
    source: str  # NS/WORKLOAD
    service: str  # NS/SERVICE
    port: int
    local_port: int
    http: bool
    method: str | None = None
    path: str | None = None
    expected: str | None = None  # ALLOW | DENY from the expectation file

    @property
    def pair(self) -> str:
        return f"{self.source} -> {self.service}:{self.port}"

    @property
    def request(self) -> str:
        return f"{self.method} {self.path}" if self.http else "tcp"


@dataclass(slots=True)
class Outcome:
    probe: Probe
    observed: str  # ALLOW | DENY | ERROR
    detail: str  # status code or how the connection ended
    explain: dict[str, Decision] = field(default_factory=dict)  # destination → decision

    @property
    def explained(self) -> str:
        verdicts = {d.verdict for d in self.explain.values()}
        return verdicts.pop() if len(verdicts) == 1 else "mixed"

    @property
    def problems(self) -> list[str]:
        found = []
        if self.observed == "ERROR":
            found.append(f"the probe failed: {self.detail}")
        elif self.explained not in (self.observed, "mixed"):
            causes = "; ".join(f"{ref}: {_cause(d)}" for ref, d in sorted(self.explain.items()))
            found.append(
                f"sidecars {self.observed} ({self.detail}), explain {self.explained} ({causes})"
            )
        expected = self.probe.expected
        if expected is not None and self.observed != expected:
            found.append(f"expected {expected}, sidecars {self.observed} ({self.detail})")
        return found

    def to_json(self) -> dict[str, Any]:
        p = self.probe
        return {
            "from": p.source,
            "to": p.service,
            "port": p.port,
            "localPort": p.local_port,
            "request": p.request,
            "observed": self.observed,
            "detail": self.detail,
            "explain": {
                ref: {"decision": d.verdict, "policy": d.policy, "rule": d.rule}
                for ref, d in sorted(self.explain.items())
            },
            "expected": p.expected,
            "ok": not self.problems,
            "problems": self.problems,
        }


def _cause(decision: Decision) -> str:
    rule = f" rule {decision.rule}" if decision.rule is not None else ""
    return f"{decision.verdict} by {decision.policy}{rule}"


def default_probes(mesh: CompiledMesh) -> list[Probe]:
    """One probe per upstream of every workload: `GET /` on http ports, a connection on tcp."""
    probes = []
    for ref, workload in sorted(mesh.registry.workloads.items()):
        for upstream in workload.spec.upstreams:
            http = _is_http(mesh, upstream.service, upstream.port)
            probes.append(
                Probe(
                    ref,
                    upstream.service,
                    upstream.port,
                    upstream.local_port,
                    http,
                    "GET" if http else None,
                    "/" if http else None,
                )
            )
    return probes


def expected_probe(mesh: CompiledMesh, item: dict[str, Any], where: str) -> Probe:
    """A probe from one `expect:` entry: {from, to, port, decision, method?, path?}."""
    source = mesh.registry.workloads.get(str(item.get("from")))
    if source is None:
        raise InputError(f"{where}: from {item.get('from')!r}: no such workload")
    for upstream in source.spec.upstreams:
        if upstream.service == item.get("to") and upstream.port == item.get("port"):
            http = _is_http(mesh, upstream.service, upstream.port)
            decision = str(item.get("decision", "")).upper()
            if decision not in ("ALLOW", "DENY"):
                raise InputError(f"{where}: decision must be ALLOW or DENY")
            method = str(item.get("method", "GET")) if http else None
            path = str(item.get("path", "/")) if http else None
            return Probe(
                source.ref,
                upstream.service,
                upstream.port,
                upstream.local_port,
                http,
                method,
                path,
                decision,
            )
    target = f"{item.get('to')}:{item.get('port')}"
    raise InputError(
        f"{where}: {source.ref} has no upstream to {target}; verify probes "
        "through the source's upstreams"
    )


def _is_http(mesh: CompiledMesh, service: str, port: int) -> bool:
    doc = mesh.registry.services[service]
    return any(p.port == port and p.protocol != "tcp" for p in doc.spec.ports)


def destinations(mesh: CompiledMesh, probe: Probe) -> list[str]:
    service = mesh.registry.services[probe.service]
    refs = mesh.registry.select(service.metadata.namespace, service.spec.selector)
    return sorted(r for r in refs if probe.port in mesh.registry.workloads[r].ports)


def explain(mesh: CompiledMesh, probe: Probe) -> dict[str, Decision]:
    identity = mesh.registry.workloads[probe.source].identity
    found = {}
    for ref in destinations(mesh, probe):
        request = Request.build(
            ref,
            probe.port,
            identity=identity,
            source_ip="127.0.0.1",
            method=probe.method,
            path=probe.path,
        )
        found[ref] = decide(mesh.plan(ref), request)
    return found


def send(mesh: CompiledMesh, probe: Probe, timeout: float = 5.0) -> tuple[str, str]:
    """(ALLOW | DENY | ERROR, detail) of one real request through the source's sidecar."""
    if probe.http:
        return _send_http(probe, timeout)
    observed, detail = _send_tcp(probe, timeout)
    if observed == "DENY":  # a refusal, or a sidecar with no app to forward to: ask the app
        missing = _apps_missing(mesh, probe)
        if missing:
            return "ERROR", f"{detail}, and no app listens on {missing}"
    return observed, detail


def _apps_missing(mesh: CompiledMesh, probe: Probe) -> str:
    """The app ports (127.0.0.1:targetPort) behind the probe's Service where nothing accepts
    a connection, as 'ADDRESS (NS/NAME's targetPort), ...'; '' when every app is there. A
    destination sidecar closes a tcp connection at once both when its RBAC refuses it and when
    it cannot reach its app, so a close is a deny only while the app is there."""
    missing = []
    for ref in destinations(mesh, probe):
        port = mesh.registry.workloads[ref].ports[probe.port]
        address = ("127.0.0.1", port.target_port or port.port)
        try:
            socket.create_connection(address, timeout=1.0).close()
        except OSError:
            missing.append(f"127.0.0.1:{address[1]} ({ref}'s targetPort)")
    return ", ".join(missing)


def _send_http(probe: Probe, timeout: float) -> tuple[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", probe.local_port, timeout=timeout)
    try:
        conn.request(probe.method or "GET", probe.path or "/", headers={"x-meshwarden": "verify"})
        response = conn.getresponse()
        body = response.read(200).decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return "ERROR", f"no HTTP answer on 127.0.0.1:{probe.local_port} ({exc})"
    finally:
        conn.close()
    status = response.status
    if status == 403:
        return "DENY", "403" + (f" {body.strip()}" if body.strip() else "")
    if status >= 500:
        return "ERROR", f"{status} {body.strip()[:80]}"
    return "ALLOW", str(status)


def _send_tcp(probe: Probe, timeout: float) -> tuple[str, str]:
    """Refused by the destination's network RBAC: the connection is closed at once. Allowed:
    it stays open (or the app answers)."""
    try:
        conn = socket.create_connection(("127.0.0.1", probe.local_port), timeout=timeout)
    except OSError as exc:
        return "ERROR", f"no listener on 127.0.0.1:{probe.local_port} ({exc})"
    with conn:
        conn.settimeout(TCP_SETTLE_SECONDS)
        try:
            data = conn.recv(1)
        except TimeoutError:
            return "ALLOW", "connection held open"
        except ConnectionError:
            return "DENY", "connection reset"
    return ("ALLOW", "the app answered") if data else ("DENY", "connection closed")
