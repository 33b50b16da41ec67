"""Who is who: the Mesh, Workloads (with their SPIFFE IDs), Services and label selection."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshwarden.engine._diagnostics import Diagnostic, error
from meshwarden.engine._documents import Document
from meshwarden.engine._hosts import Host, build_hosts
from meshwarden.engine._model import (
    PROXIED,
    HostSpec,
    LabelSelector,
    MeshSpec,
    ServiceSpec,
    WorkloadPort,
    WorkloadSelector,
    WorkloadSpec,
)
from meshwarden.engine._patterns import IpAddress, parse_address
from meshwarden.engine._spiffe import SpiffeId, TrustDomain


@dataclass(frozen=True, slots=True, eq=False)
class Workload:
    """A workload and the identity it proves with its SVID."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    service_account: str
    spiffe_id: SpiffeId
    addresses: tuple[IpAddress, ...]
    ports: Mapping[int, WorkloadPort]  # what its sidecar serves: tcp, http and grpc ports
    selectors: tuple[str, ...]
    document: Document[WorkloadSpec]
    # udp and sctp ports by (protocol, number): no sidecar carries them, the packet filter does
    packet_ports: Mapping[tuple[str, int], WorkloadPort] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def identity(self) -> str:
        return str(self.spiffe_id)

    @property
    def spec(self) -> WorkloadSpec:
        return self.document.spec

    def port_for(self, number: int, transport: str = "tcp") -> WorkloadPort | None:
        """The port `number` of this transport (tcp covers http and grpc ports), or None."""
        if transport == "tcp":
            return self.ports.get(number)
        return self.packet_ports.get((transport, number))

    def all_ports(self) -> list[WorkloadPort]:
        """Every port, sidecar-served first, each group sorted by number."""
        packet = sorted(self.packet_ports.values(), key=lambda p: (p.port, p.protocol))
        return [port for _, port in sorted(self.ports.items())] + packet


@dataclass(frozen=True, slots=True)
class Mesh:
    """The Mesh document: trust domain and mesh-wide settings."""

    spec: MeshSpec
    document: Document[MeshSpec] | None = None

    @property
    def trust_domain(self) -> TrustDomain:
        return TrustDomain(self.spec.trust_domain)


@dataclass(slots=True)
class Registry:
    """Workloads indexed by namespace and label, so a selector resolves without a full scan."""

    mesh: Mesh
    workloads: dict[str, Workload] = field(default_factory=dict)
    services: dict[str, Document[ServiceSpec]] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)  # by node name
    _by_namespace: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    _by_label: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    @property
    def trust_domain(self) -> TrustDomain:
        return self.mesh.trust_domain

    def add(self, workload: Workload) -> None:
        self.workloads[workload.ref] = workload
        self._by_namespace[workload.namespace].add(workload.ref)
        for item in workload.labels.items():
            self._by_label[item].add(workload.ref)

    def select(self, namespace: str | None, selector: LabelSelector | None) -> frozenset[str]:
        """Refs of workloads in `namespace` (None: every namespace) matching `selector`."""
        if namespace is None:
            candidates: set[str] = set(self.workloads)
        else:
            candidates = set(self._by_namespace.get(namespace, ()))
        if selector is None:
            return frozenset(candidates)
        for item in selector.match_labels.items():
            candidates &= self._by_label.get(item, set())
            if not candidates:
                return frozenset()
        if selector.match_expressions:
            candidates = {ref for ref in candidates if _meets(self.workloads[ref].labels, selector)}
        return frozenset(candidates)

    def identities_of(self, selector: WorkloadSelector, namespace: str) -> frozenset[str]:
        """SPIFFE IDs of the workloads a `workloads` selector of a rule names (its `namespaces`,
        by default the policy's own `namespace`)."""
        refs: set[str] = set()
        for ns in selector.namespaces or [namespace]:
            refs |= self.select(ns, selector)
        return frozenset(self.workloads[ref].identity for ref in refs)

    def workload_at(self, address: IpAddress) -> Workload | None:
        """The workload that has `address` among its addresses, if any (the first by ref)."""
        for ref in sorted(self.workloads):
            if address in self.workloads[ref].addresses:
                return self.workloads[ref]
        return None

    def on_node(self, node: str) -> list[Workload]:
        """Workloads pinned to `node` by a `node:NAME` selector, sorted by ref."""
        selector = f"node:{node}"
        return sorted(
            (w for w in self.workloads.values() if selector in w.selectors), key=lambda w: w.ref
        )

    def is_root(self, namespace: str) -> bool:
        return namespace == self.mesh.spec.root_namespace

    def targets(self, document: Document[Any]) -> frozenset[str]:
        """Workloads a namespaced, selector-carrying document (policy, JwtIssuer) applies to."""
        namespace = document.metadata.namespace
        scope = None if self.is_root(namespace) else namespace
        return self.select(scope, document.spec.selector)


def _meets(labels: Mapping[str, str], selector: LabelSelector) -> bool:
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
        if req.operator == "In" and labels.get(req.key) not in req.values:
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
    return True


def build_registry(
    meshes: list[Document[MeshSpec]],
    workloads: Iterable[Document[WorkloadSpec]],
    services: Iterable[Document[ServiceSpec]],
    hosts: Iterable[Document[HostSpec]] = (),
) -> tuple[Registry, list[Diagnostic]]:
    problems = [
        error(
            extra.at("metadata", "name"),
            f"only one Mesh is allowed; {meshes[0].ref} "
            f"is already defined at {meshes[0].at('metadata', 'name')}",
        )
        for extra in meshes[1:]
    ]
    mesh = Mesh(meshes[0].spec, meshes[0]) if meshes else Mesh(MeshSpec())
    registry = Registry(mesh)
    registry.hosts, found_hosts = build_hosts(hosts)
    problems.extend(found_hosts)
    for document in services:
        registry.services[document.ref] = document
    for workload_doc in workloads:
        workload, found = _workload(workload_doc, mesh)
        problems.extend(found)
        if workload is not None:
            registry.add(workload)
    problems.extend(_check_addresses(registry))
    problems.extend(_check_upstreams(registry))
    return registry, problems


def _workload(doc: Document[WorkloadSpec], mesh: Mesh) -> tuple[Workload | None, list[Diagnostic]]:
    spec, meta = doc.spec, doc.metadata
    account = spec.service_account or meta.name
    problems: list[Diagnostic] = []
    if spec.spiffe_id is not None:
        spiffe_id = SpiffeId.parse(spec.spiffe_id)
        if spiffe_id.trust_domain != mesh.trust_domain:
            problems.append(
                error(
                    doc.at("spec", "spiffeId"),
                    f"spiffeId {spec.spiffe_id!r} is outside the mesh trust domain "
                    f"{mesh.trust_domain}; this mesh's CA can only issue spiffe://{mesh.trust_domain}/...",
                )
            )
    else:
        spiffe_id = SpiffeId.of(mesh.trust_domain, f"/ns/{meta.namespace}/sa/{account}")
    ports: dict[int, WorkloadPort] = {}
    packet_ports: dict[tuple[str, int], WorkloadPort] = {}
    for i, port in enumerate(spec.ports):
        key = (port.transport, port.port)
        if (port.proxied and port.port in ports) or key in packet_ports:
            problems.append(
                error(
                    doc.at("spec", "ports", i, "port"),
                    f"{port.transport} port {port.port} is listed twice in workload {doc.ref}",
                )
            )
        if port.proxied:
            ports[port.port] = port
        else:
            packet_ports[key] = port
            problems.extend(_packet_target_port(doc, i, port))
    if problems:
        return None, problems
    addresses = tuple(parse_address(a) for a in spec.addresses)
    workload = Workload(
        meta.namespace,
        meta.name,
        dict(meta.labels),
        account,
        spiffe_id,
        addresses,
        ports,
        tuple(spec.selectors),
        doc,
        packet_ports,
    )
    return workload, []


def _packet_target_port(
    doc: Document[WorkloadSpec], i: int, port: WorkloadPort
) -> list[Diagnostic]:
    """A udp/sctp port with a targetPort: no sidecar carries it, so nothing would forward port
    to targetPort; the packet filter lets the datagrams through to `port` itself."""
    if port.target_port is None:
        return []
    message = (
        f"targetPort {port.target_port} means nothing on {port.transport} port {port.port} of "
        f"workload {doc.ref}: no sidecar carries {port.transport} (the packet filter lets it "
        f"through to the app on port {port.port} itself); remove targetPort and have the app "
        f"listen on {port.port}"
    )
    return [error(doc.key_at("spec", "ports", i, "targetPort"), message)]


def _check_addresses(registry: Registry) -> list[Diagnostic]:
    problems: list[Diagnostic] = []
    seen: dict[tuple[IpAddress, int], str] = {}
    for workload in registry.workloads.values():
        for a, address in enumerate(workload.addresses):
            for port in workload.ports:
                other = seen.setdefault((address, port), workload.ref)
                if other != workload.ref:
                    problems.append(
                        error(
                            workload.document.at("spec", "addresses", a),
                            f"{address}:{port} is already used by workload {other}; "
                            "give each workload its own address (127.0.0.0/8 has plenty)",
                        )
                    )
    return problems


def _check_upstreams(registry: Registry) -> list[Diagnostic]:
    problems: list[Diagnostic] = []
    for workload in registry.workloads.values():
        local_ports: set[int] = set()
        for i, upstream in enumerate(workload.spec.upstreams):
            where = workload.document.at("spec", "upstreams", i)
            service = registry.services.get(upstream.service)
            if service is None:
                problems.append(
                    error(
                        where,
                        f"upstream service {upstream.service!r} is not "
                        "defined; add a Service document or fix the name",
                    )
                )
            elif any(
                p.port == upstream.port and p.protocol not in PROXIED for p in service.spec.ports
            ):
                problems.append(
                    error(
                        where,
                        f"port {upstream.port} of service {upstream.service} is not tcp: "
                        "upstreams go through the sidecar, which carries tcp only",
                    )
                )
            elif upstream.port not in {p.port for p in service.spec.ports}:
                known = ", ".join(str(p.port) for p in service.spec.ports) or "none"
                problems.append(
                    error(
                        where,
                        f"service {upstream.service} has no port "
                        f"{upstream.port} (its ports: {known})",
                    )
                )
            if upstream.local_port in local_ports:
                problems.append(error(where, f"localPort {upstream.local_port} is used twice"))
            local_ports.add(upstream.local_port)
    return problems
