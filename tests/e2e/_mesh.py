"""The one way e2e tests write a mesh: documents built as plain values and written as YAML, so a
test states only what it is about (addresses, ports, rules) and no test keeps a YAML template
with escaped braces. The documents are the policy language's own (docs/policy-language.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

API_VERSION = "meshwarden.io/v1alpha1"
Document = dict[str, Any]


def document(
    kind: str,
    ref: str,
    spec: Mapping[str, Any],
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Document:
    """`kind` named `ref` ("ns/name", or "name" for the default namespace / unnamespaced)."""
    namespace, _, name = ref.rpartition("/")
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": dict(spec)}


def mesh_document(
    spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None
) -> Document:
    return document("Mesh", "mesh", spec, annotations=annotations)


def app(name: str) -> dict[str, Any]:
    """The selector of the workloads labelled `app: name`."""
    return {"matchLabels": {"app": name}}


def workload(ref: str, app_label: str, spec: Mapping[str, Any]) -> Document:
    return document("Workload", ref, spec, labels={"app": app_label})


def service(ref: str, app_label: str, ports: Iterable[Mapping[str, Any]]) -> Document:
    return document("Service", ref, {"selector": app(app_label), "ports": list(ports)})


def port(number: int, target: int, protocol: str = "http") -> dict[str, Any]:
    """A workload port `number` whose app listens on 127.0.0.1:`target`."""
    return {"port": number, "targetPort": target, "protocol": protocol}


def upstream(service_ref: str, number: int, local_port: int) -> dict[str, Any]:
    return {"service": service_ref, "port": number, "localPort": local_port}


def policy(
    ref: str,
    rules: list[dict[str, Any]],
    *,
    selector: str | None = None,
    action: str | None = None,
    mode: str | None = None,
) -> Document:
    """An AuthorizationPolicy; `selector` names the `app` label of the workloads it selects."""
    spec: dict[str, Any] = {} if selector is None else {"selector": app(selector)}
    spec |= {"action": action} if action else {}
    spec |= {"mode": mode} if mode else {}
    return document("AuthorizationPolicy", ref, spec | {"rules": rules})


def shop_pair(net: str, front_out: int, app_port: int) -> list[Document]:
    """frontend-1 (an upstream to shop/backend on 127.0.0.1:`front_out`) and backend-1 (HTTP 8080
    → 127.0.0.1:`app_port`) on `net`.2 and `net`.3, and the Service shop/backend."""
    return [
        workload(
            "shop/frontend-1",
            "frontend",
            {"addresses": [f"{net}.2"], "upstreams": [upstream("shop/backend", 8080, front_out)]},
        ),
        workload(
            "shop/backend-1",
            "backend",
            {"addresses": [f"{net}.3"], "ports": [port(8080, app_port)]},
        ),
        service("shop/backend", "backend", [{"port": 8080, "protocol": "http"}]),
    ]


def write(path: Path, documents: Iterable[Document]) -> Path:
    """Write the documents to `path` as one multi-document YAML file, as a user would keep them."""
    path.write_text(yaml.safe_dump_all(list(documents), sort_keys=False, default_flow_style=None))
    return path


def jwt_issuer(ref: str, selector: str, spec: Mapping[str, Any]) -> Document:
    """A JwtIssuer for the workloads labelled `app: selector`."""
    return document("JwtIssuer", ref, {"selector": app(selector), **spec})
