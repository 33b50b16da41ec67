"""A path from one workload to another (or to an address outside the mesh): allowed iff egress
at the source AND ingress at the destination allow it. `decide_path` is what `explain
--from-workload` and `matrix` ask for one (source, destination, port, protocol)."""

from __future__ import annotations

from dataclasses import dataclass

from meshwarden.engine._compiler import CompiledMesh
from meshwarden.engine._egress_rules import Flow
from meshwarden.engine._evaluator import Decision, decide, decide_egress
from meshwarden.engine._patterns import IpAddress
from meshwarden.engine._registry import Workload
from meshwarden.engine._request import Request
from meshwarden.engine._vocabulary import Cause


@dataclass(frozen=True, slots=True)
class PathDecision:
    """Egress at the source and ingress at the destination; `allowed` is their AND. `egress` is
    None when the source is not a mesh workload; `ingress` None for an address outside the mesh
    (no destination policy applies there)."""

    egress: Decision | None
    ingress: Decision | None

    @property
    def allowed(self) -> bool:
        return all(d.allowed for d in (self.egress, self.ingress) if d is not None)

    @property
    def direction(self) -> str:
        """Which side decided: `egress` when the source's egress denied, else `ingress` (or
        `egress` when there is no destination workload)."""
        if self.ingress is None or (self.egress is not None and not self.egress.allowed):
            return "egress"
        return "ingress"

    @property
    def deciding(self) -> Decision:
        """The decision of the side named by `direction`."""
        decision = self.egress if self.direction == "egress" else self.ingress
        assert decision is not None
        return decision


def decide_path(
    mesh: CompiledMesh,
    source: str,
    destination: str,
    port: int,
    protocol: str = "tcp",
    *,
    method: str | None = None,
    path: str | None = None,
    explain: bool = False,
) -> PathDecision:
    """May workload `source` (NS/NAME) reach `port`/`protocol` of workload `destination`?

    The destination sees the source's identity from its first address. On an http/grpc port
    the request is `method` `path` (default GET /), as `explain` does. A port the destination
    does not declare (for that protocol) is denied with cause `port:undeclared`: no sidecar
    listener and no packet-filter rule opens it, so nothing in the mesh reaches it; egress is
    still decided, for the record. Raises KeyError for an unknown workload."""
    src = mesh.registry.workloads[source]
    dst = mesh.registry.workloads[destination]
    flow = Flow.build(
        source,
        port,
        protocol,
        destination=destination,
        identity=dst.identity,
        address=dst.addresses[0] if dst.addresses else None,
    )
    egress = decide_egress(mesh.egress_plan(source), flow, explain=explain)
    if dst.port_for(port, protocol) is None:
        return PathDecision(egress, undeclared_port(dst, port, protocol))
    request = ingress_request(src, dst, port, protocol, method, path)
    ingress = decide(mesh.plan(destination), request, explain=explain)
    return PathDecision(egress, ingress)


def undeclared_port(destination: Workload, port: int, protocol: str) -> Decision:
    """The ingress side of a path to a port `destination` does not declare: denied, as the
    sidecar (no listener) and the packet filter (no rule) would."""
    reason = (
        f"port {port}/{protocol} not declared by {destination.ref}: nothing in the mesh "
        "listens there or lets it through"
    )
    return Decision(False, Cause.PORT_UNDECLARED, None, reason)


def ingress_request(
    source: Workload,
    destination: Workload,
    port: int,
    protocol: str,
    method: str | None = None,
    path: str | None = None,
) -> Request:
    """The request `destination` sees from workload `source` on `port`/`protocol`."""
    declared = destination.port_for(port, protocol)
    http = declared is not None and declared.is_http
    return Request.build(
        destination.ref,
        port,
        identity=source.identity,
        source_ip=source.addresses[0] if source.addresses else None,
        method=(method or "GET") if http else None,
        path=(path or "/") if http else None,
        protocol=protocol,
    )


def decide_outbound(
    mesh: CompiledMesh,
    source: str,
    address: IpAddress,
    port: int,
    protocol: str = "tcp",
    *,
    explain: bool = False,
) -> PathDecision:
    """May workload `source` reach `address` (outside the mesh) on `port`/`protocol`? Only the
    source's egress decides; no destination policy applies. Raises KeyError for an unknown
    source, ValueError when `address` is a mesh workload's (use `decide_path`)."""
    owner = mesh.registry.workload_at(address)
    if owner is not None:
        raise ValueError(f"{address} is the address of workload {owner.ref}")
    mesh.registry.workloads[source]
    flow = Flow.build(source, port, protocol, address=address)
    return PathDecision(decide_egress(mesh.egress_plan(source), flow, explain=explain), None)
