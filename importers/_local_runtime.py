"""`import --runtime local`: the imported mesh made runnable on one host by `meshwarden up`.

Kubernetes gives each pod an address and kube-proxy turns a Service's port into the pods'
`targetPort`; on one host neither exists. This overlay gives every imported Workload a loopback
address of its own (from `network`, in the order of NS/NAME), a `targetPort` on 127.0.0.1 for
each port its sidecar serves (tcp, http, grpc: where the app behind it listens), and an upstream
to every Service port of every other Service (a `localPort` on 127.0.0.1 to connect to). A
Service's ports become the container ports they target (a named `targetPort` resolved on the
selected pods), as there is no kube-proxy to translate them. Upstreams are routes, not
permissions: the translated policies decide every connection, as NetworkPolicy did.

It only adds where things run: no policy, selector, identity or port number of a pod changes,
so `matrix` answers the same before and after. Addresses are loopback only (127.0.0.0/8).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from meshwarden.engine import Diagnostic, UsageError
from meshwarden.importers._names import dns_label
from meshwarden.importers._objects import KubeObject, error

PROXIED = ("tcp", "http", "grpc")  # what a sidecar carries (udp/sctp ports have no targetPort)
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
DEFAULT_NETWORK = "127.10.0.0/16"
DEFAULT_FIRST_PORT = 20000


@dataclass(frozen=True, slots=True)
class LocalRuntime:
    """Where the local runtime puts workloads: their addresses come from `network` (within
    127.0.0.0/8), targetPorts and localPorts count up from `first_port`."""

    network: ipaddress.IPv4Network
    first_port: int

    @classmethod
    def parse(cls, network: str, first_port: int) -> LocalRuntime:
        """Raises ValueError naming what is wrong."""
        parsed = ipaddress.ip_network(network, strict=False)
        if not isinstance(parsed, ipaddress.IPv4Network) or not parsed.subnet_of(LOOPBACK):
            raise ValueError(f"{network} is not within 127.0.0.0/8 (the local runtime is loopback)")
        if not 1024 <= first_port <= 65535:
            raise ValueError(f"{first_port} is not a port from 1024 to 65535")
        return cls(parsed, first_port)


Document = dict[str, Any]


def localize(
    documents: list[Document], services: list[KubeObject], runtime: LocalRuntime
) -> list[Diagnostic]:
    """Rewrite the Workload and Service `documents` in place for `runtime`; the problems
    (nothing is written then). Raises UsageError when the addresses or ports run out."""
    workloads = sorted(
        (d for d in documents if d["kind"] == "Workload"), key=lambda d: _ref(d["metadata"])
    )
    addresses = _addresses(runtime.network)
    for document in workloads:
        address = next(addresses, None)
        if address is None:
            raise UsageError(
                f"--local-network {runtime.network} has fewer addresses than the "
                f"{len(workloads)} workloads"
            )
        document["spec"]["addresses"] = [address]
    originals = {(s.namespace, dns_label(s.name)): s for s in services}
    service_docs = [d for d in documents if d["kind"] == "Service"]
    problems: list[Diagnostic] = []
    for document in service_docs:
        key = (document["metadata"]["namespace"], document["metadata"]["name"])
        problems.extend(_service_ports(document, originals[key], workloads))
    ports = iter(range(runtime.first_port, 65536))
    for document in workloads:
        if not _place(document, service_docs, workloads, ports):
            raise UsageError(f"--local-first-port {runtime.first_port} leaves too few ports")
    return problems


def _ref(metadata: dict[str, Any]) -> str:
    return f"{metadata.get('namespace', 'default')}/{metadata['name']}"


def _addresses(network: ipaddress.IPv4Network) -> Iterator[str]:
    for host in network.hosts():
        if host != ipaddress.IPv4Address("127.0.0.1"):
            yield str(host)


def _selected(service: Document, workloads: list[Document]) -> list[Document]:
    namespace = service["metadata"]["namespace"]
    labels = service["spec"]["selector"]["matchLabels"]
    return [
        w
        for w in workloads
        if w["metadata"]["namespace"] == namespace
        and all(w["metadata"].get("labels", {}).get(k) == v for k, v in labels.items())
    ]


def _service_ports(
    service: Document, original: KubeObject, workloads: list[Document]
) -> list[Diagnostic]:
    """The Service's ports as the container ports they target; a named targetPort that the
    selected pods resolve to different numbers has no one number: a problem."""
    members = _selected(service, workloads)
    entries = original.get("spec", "ports") or []
    out: list[dict[str, Any]] = []
    problems: list[Diagnostic] = []
    for i, (port, entry) in enumerate(zip(service["spec"]["ports"], entries, strict=True)):
        target = entry.get("targetPort", entry.get("port"))
        if isinstance(target, str):
            numbers = {n for w in members if (n := _named(w, target)) is not None}
            if not members:
                continue  # it selects no pod: nothing to route to
            if len(numbers) != 1:
                found = ", ".join(map(str, sorted(numbers))) or "none"
                message = (
                    f"targetPort {target!r} is port {found} on the pods the Service selects; "
                    "--runtime local needs one number per Service port (there is no kube-proxy)"
                )
                problems.append(error(original.at("spec", "ports", i, "targetPort"), message))
                continue
            target = numbers.pop()
        if all((p["port"], p.get("protocol")) != (target, port.get("protocol")) for p in out):
            out.append({k: v for k, v in port.items() if k != "targetPort"} | {"port": target})
    service["spec"]["ports"] = out  # two Service ports to one pod port route alike: one
    return problems


def _named(workload: Document, name: str) -> int | None:
    for port in workload["spec"].get("ports", []):
        if port.get("name") == dns_label(name) and port.get("protocol") in PROXIED:
            return int(port["port"])
    return None


def _place(
    workload: Document, services: list[Document], workloads: list[Document], ports: Iterator[int]
) -> bool:
    """targetPorts for the ports its sidecar serves, upstreams to every other Service's
    ports; False when the ports run out."""
    try:
        for port in workload["spec"].get("ports", []):
            if port.get("protocol", "tcp") in PROXIED:
                port["targetPort"] = next(ports)
        upstreams = [
            {"service": _ref(s["metadata"]), "port": p["port"], "localPort": next(ports)}
            for s in sorted(services, key=lambda s: _ref(s["metadata"]))
            if _selected(s, workloads) and workload not in _selected(s, workloads)
            for p in s["spec"]["ports"]
            if p.get("protocol", "tcp") in PROXIED
        ]
    except StopIteration:
        return False
    if upstreams:
        workload["spec"]["upstreams"] = upstreams
    return True
