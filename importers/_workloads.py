"""The inventory as Workload and Service documents."""

from __future__ import annotations

from typing import Any

from meshwarden.importers._context import ImportContext
from meshwarden.importers._fields import Fields
from meshwarden.importers._inventory import Pod, workload_port
from meshwarden.importers._names import dns_label
from meshwarden.importers._objects import KubeObject
from meshwarden.importers._protocols import port_protocol


def emit_inventory(ctx: ImportContext) -> None:
    """A Workload per pod (with its identity when it was split) and a Service per Service
    that selects pods by labels."""
    for pod in ctx.inventory.pods:
        ctx.emit(pod.origin, _workload(ctx, pod))
    for service in ctx.inventory.services:
        document = _service(ctx, service)
        if document is not None:
            ctx.emit(service, document)


def _workload(ctx: ImportContext, pod: Pod) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": pod.name, "namespace": pod.namespace}
    labels = pod.labels | ctx.added_labels.get(pod.ref, {})
    if labels:
        metadata["labels"] = labels
    spec: dict[str, Any] = {"serviceAccount": pod.service_account}
    if (pod.namespace, pod.service_account) in ctx.split:
        spec["spiffeId"] = ctx.identity(pod)
    if pod.addresses:
        spec["addresses"] = list(pod.addresses)
    services = ctx.inventory.services
    ports = [workload_port(pod, port, services) for port in pod.ports]
    mtls = ctx.workload_mtls.get(pod.ref, {})
    if "mtls" in mtls:
        spec["mtls"] = mtls["mtls"]
    for port in ports:
        if port["port"] in mtls.get("ports", {}):
            port["mtls"] = mtls["ports"][port["port"]]
    if ports:
        spec["ports"] = ports
    return {"kind": "Workload", "metadata": metadata, "spec": spec}


def _service(ctx: ImportContext, obj: KubeObject) -> dict[str, Any] | None:
    fields = Fields(obj, ctx.problems)
    selector = fields.mapping("spec", "selector")
    if not selector:
        ctx.note(f"{obj.origin}: no selector (its endpoints are managed by hand); not imported")
        return None
    ports = []
    for i, _ in enumerate(fields.sequence("spec", "ports") or []):
        port = _service_port(fields, ("spec", "ports", i))
        if port is not None:
            ports.append(port)
    metadata = {"name": dns_label(obj.name), "namespace": obj.namespace}
    labels = {str(k): str(v) for k, v in selector.items()}
    spec = {"selector": {"matchLabels": labels}, "ports": ports}
    return {"kind": "Service", "metadata": metadata, "spec": spec}


def _service_port(fields: Fields, path: tuple[str | int, ...]) -> dict[str, Any] | None:
    number = fields.port(*path, "port")
    if not isinstance(number, int):
        fields.fail(path, "a Service port needs a port number")
        return None
    name = fields.string(*path, "name")
    protocol = fields.string(*path, "protocol") or "TCP"
    app_protocol = fields.string(*path, "appProtocol")
    out: dict[str, Any] = {"port": number}
    if name:
        out["name"] = dns_label(name)
    target = fields.obj.get(*path, "targetPort")
    if isinstance(target, int) and not isinstance(target, bool):
        out["targetPort"] = target
    out["protocol"] = port_protocol(protocol, app_protocol, name)
    return out
