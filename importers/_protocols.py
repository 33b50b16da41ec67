"""A port's protocol by Istio's conventions: the Kubernetes protocol first (UDP and SCTP are
never HTTP), then `appProtocol`, then the port name's prefix (`http-web`, `grpc`), tcp otherwise.
https and tls ports are tcp to the mesh (their content is opaque to a sidecar)."""

from __future__ import annotations

_HTTP = frozenset({"http", "http2", "h2c"})
_GRPC = frozenset({"grpc", "grpc-web"})


def _application(word: str) -> str | None:
    if word in _HTTP or word == "kubernetes.io/h2c":
        return "http"
    if word in _GRPC:
        return "grpc"
    return None


def port_protocol(kube_protocol: str, app_protocol: str | None, name: str | None) -> str:
    """The meshwarden port protocol (http, grpc, tcp, udp, sctp)."""
    l4 = kube_protocol.lower()
    if l4 in ("udp", "sctp"):
        return l4
    if app_protocol:
        return _application(app_protocol.lower()) or "tcp"
    if name:
        prefix = name.lower().split("-", 1)[0]
        return _application(prefix) or "tcp"
    return "tcp"
