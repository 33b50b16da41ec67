"""Who runs where: Namespaces, Pods, controller templates and Services read from the input.

A Pod is one workload (named after the pod). A Deployment, StatefulSet, DaemonSet or ReplicaSet
whose pods are not in the input stands for `replicas` workloads named `NAME-0`, `NAME-1`, ...
(DaemonSets: one), from its pod template. Fields that do not change who may talk to whom
(images, resources, probes, status conditions) are not read.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from meshwarden.engine import Diagnostic
from meshwarden.importers._fields import Fields
from meshwarden.importers._names import dns_label, joined
from meshwarden.importers._objects import KubeObject
from meshwarden.importers._protocols import port_protocol

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
CONTROLLERS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"})
INVENTORY_KINDS = frozenset({("", "Namespace"), ("", "Pod"), ("", "Service")}) | frozenset(
    ("apps", kind) for kind in CONTROLLERS
)
_DONE_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class PodPort:
    """A container port: number, optional name, and Kubernetes protocol (TCP, UDP, SCTP)."""

    port: int
    name: str | None
    protocol: str


@dataclass(frozen=True, slots=True, eq=False)
class Pod:
    """One workload of the inventory: a pod, or one replica of a controller's template."""

    namespace: str
    name: str
    labels: dict[str, str]
    service_account: str
    ports: tuple[PodPort, ...]
    addresses: tuple[str, ...]
    origin: KubeObject

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: str) -> int | None:
        """The number of the container port called `name` with `protocol`, if any."""
        for port in self.ports:
            if port.name == name and port.protocol == protocol:
                return port.port
        return None


@dataclass(slots=True)
class Inventory:
    """Namespaces (with their labels), pods and services found in the input."""

    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    services: list[KubeObject] = field(default_factory=list)

    def pods_in(self, namespace: str) -> list[Pod]:
        return [p for p in self.pods if p.namespace == namespace]


def build_inventory(objects: list[KubeObject], problems: list[Diagnostic]) -> Inventory:
    """The inventory of the inventory kinds among `objects` (others are left alone)."""
    inventory = Inventory()
    owners = _owners_with_pods(objects)
    for obj in objects:
        if obj.kind == "Namespace" and obj.group == "":
            inventory.namespaces[obj.name] = obj.labels | {NAMESPACE_NAME_LABEL: obj.name}
        elif obj.kind == "Pod" and obj.group == "":
            if obj.get("status", "phase") not in _DONE_PHASES:
                inventory.pods.extend(_pods(obj, obj.name, ("spec",), problems))
        elif obj.kind in CONTROLLERS and obj.group == "apps":
            if (obj.namespace, obj.kind, obj.name) not in owners:
                inventory.pods.extend(_template_pods(obj, problems))
        elif obj.kind == "Service" and obj.group == "":
            inventory.services.append(obj)
    for pod in inventory.pods:
        labels = {NAMESPACE_NAME_LABEL: pod.namespace}
        inventory.namespaces.setdefault(pod.namespace, labels)
    return inventory


def _owners_with_pods(objects: list[KubeObject]) -> set[tuple[str, str, str]]:
    """Controllers whose pods (or ReplicaSets) are in the input: their templates are not
    workloads of their own. A ReplicaSet's owner (a Deployment) is followed."""
    owned_by: dict[tuple[str, str, str], list[tuple[str, str, str]]] = {}
    for obj in objects:
        for ref in obj.get("metadata", "ownerReferences") or []:
            if isinstance(ref, dict) and isinstance(ref.get("kind"), str):
                owner = (obj.namespace, ref["kind"], str(ref.get("name")))
                owned_by.setdefault((obj.namespace, obj.kind, obj.name), []).append(owner)
    found: set[tuple[str, str, str]] = set()
    pending = [key for key in owned_by if key[1] in ("Pod", "ReplicaSet")]
    while pending:
        for owner in owned_by.get(pending.pop(), []):
            if owner not in found:
                found.add(owner)
                pending.append(owner)
    return found


def _template_pods(obj: KubeObject, problems: list[Diagnostic]) -> list[Pod]:
    fields = Fields(obj, problems)
    replicas = 1 if obj.kind == "DaemonSet" else fields.integer("spec", "replicas")
    count = 1 if replicas is None else replicas
    if fields.mapping("spec", "template") is None:
        fields.fail(("spec",), f"{obj.kind} {obj.ref} has no spec.template")
        return []
    return [
        pod
        for i in range(count)
        for pod in _pods(obj, joined(obj.name, str(i)), ("spec", "template", "spec"), problems)
    ]


def _pods(
    obj: KubeObject, name: str, spec: tuple[str, ...], problems: list[Diagnostic]
) -> list[Pod]:
    fields = Fields(obj, problems)
    if fields.mapping(*spec) is None:
        return []
    if obj.get(*spec, "hostNetwork") is True:
        fields.fail((*spec, "hostNetwork"), _HOST_NETWORK)
        return []
    meta = ("metadata",) if spec == ("spec",) else ("spec", "template", "metadata")
    labels = fields.mapping(*meta, "labels") or {}
    account = fields.string(*spec, "serviceAccountName") or fields.string(*spec, "serviceAccount")
    pod = Pod(
        obj.namespace,
        dns_label(name),
        {str(k): str(v) for k, v in labels.items()},
        account or "default",
        _container_ports(fields, spec),
        _addresses(fields) if spec == ("spec",) else (),
        obj,
    )
    return [pod]


_HOST_NETWORK = (
    "hostNetwork pods share their node's address and are not isolated by NetworkPolicy; "
    "describe the node with a Host document instead"
)


def _container_ports(fields: Fields, spec: tuple[str, ...]) -> tuple[PodPort, ...]:
    ports: dict[tuple[int, str], PodPort] = {}
    for group in ("initContainers", "containers"):
        for c, container in enumerate(fields.sequence(*spec, group) or []):
            if not isinstance(container, dict):
                continue
            for p, _ in enumerate(fields.sequence(*spec, group, c, "ports") or []):
                port = _container_port(fields, (*spec, group, c, "ports", p))
                if port is not None:
                    ports.setdefault((port.port, port.protocol), port)
    return tuple(ports.values())


def _container_port(fields: Fields, path: tuple[str | int, ...]) -> PodPort | None:
    number = fields.integer(*path, "containerPort")
    protocol = fields.string(*path, "protocol") or "TCP"
    if protocol not in ("TCP", "UDP", "SCTP"):
        fields.fail((*path, "protocol"), f"protocol {protocol!r} is not TCP, UDP or SCTP")
        return None
    if number is None or not 1 <= number <= 65535:
        fields.fail(path, "a container port needs a containerPort number (1-65535)")
        return None
    return PodPort(number, fields.string(*path, "name"), protocol)


def _addresses(fields: Fields) -> tuple[str, ...]:
    paths: list[tuple[str | int, ...]] = [("status", "podIP")]
    for i, _ in enumerate(fields.sequence("status", "podIPs") or []):
        paths.append(("status", "podIPs", i, "ip"))
    found: list[str] = []
    for path in paths:
        text = fields.string(*path)
        if text is None:
            continue
        try:
            found.append(str(ipaddress.ip_address(text)))
        except ValueError:
            fields.fail(path, f"{text!r} is not an IP address")
    return tuple(dict.fromkeys(found))


def workload_port(pod: Pod, port: PodPort, services: list[KubeObject]) -> dict[str, Any]:
    """The Workload port of a container port; its protocol from the Service ports that
    target it (Istio looks at the Service), else from the container port's name."""
    app_protocol, name = None, port.name
    for service in services:
        for entry in _service_ports_to(service, pod, port):
            app_protocol = app_protocol or entry.get("appProtocol")
            name = name or entry.get("name")
    out: dict[str, Any] = {"port": port.port}
    if port.name:
        out["name"] = dns_label(port.name)
    out["protocol"] = port_protocol(port.protocol, app_protocol, _service_name(name))
    return out


def _service_name(name: Any) -> str | None:
    return name if isinstance(name, str) else None


def _service_ports_to(service: KubeObject, pod: Pod, port: PodPort) -> list[dict[str, Any]]:
    selector = service.get("spec", "selector")
    if service.namespace != pod.namespace or not isinstance(selector, dict) or not selector:
        return []
    if any(pod.labels.get(str(k)) != str(v) for k, v in selector.items()):
        return []
    entries = service.get("spec", "ports") or []
    return [
        e
        for e in entries
        if isinstance(e, dict)
        and e.get("protocol", "TCP") == port.protocol
        and e.get("targetPort", e.get("port")) in (port.port, port.name)
    ]
