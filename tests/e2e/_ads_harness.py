"""An ADS server over mTLS (certificates from our CA) in a background event loop, the Envoy
bootstrap that connects to it, a small snapshot (cluster, endpoints, listener, routes) and
plain HTTP upstreams."""

from __future__ import annotations

import datetime as dt
import http.server
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey as PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    MtlsEndpoint,
    RotatingCredentials,
    SystemClock,
    X509Svid,
    generate_key,
    private_key_pkcs8_pem,
    server_spiffe_id,
)
from meshwarden.xds import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    AggregatedDiscovery,
    ResourceEncoder,
    Snapshot,
    SnapshotCache,
    ads_handler,
    workload_authorizer,
)

from ..integration.harness import LoopThread

TD = TrustDomain("example.org")
NODE = "shop/web"
WEB_ID = "spiffe://example.org/ns/shop/sa/web"
_T = "type.googleapis.com/envoy.extensions."


@dataclass(frozen=True)
class Credentials:
    chain: bytes
    key: bytes


@dataclass
class Pki:
    ca: CertificateAuthority = field(
        default_factory=lambda: CertificateAuthority(
            CaConfig(TD, svid_ttl=dt.timedelta(minutes=30)), SystemClock()
        )
    )

    def mint(self, spiffe_id: str) -> Credentials:
        key = generate_key()
        return self._credentials(
            self.ca.sign_x509_svid(key.public_key(), SpiffeId.parse(spiffe_id)), key
        )

    def mint_server(self, dns_names: tuple[str, ...]) -> Credentials:
        key = generate_key()
        return self._credentials(self.ca.sign_server_svid(key.public_key(), dns_names), key)

    @staticmethod
    def _credentials(svid: X509Svid, key: PrivateKey) -> Credentials:
        chain = b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain)
        return Credentials(chain, private_key_pkcs8_pem(key))

    def bundle_pem(self) -> bytes:
        return self.ca.bundle().x509_pem()


class AdsServer:
    """Our ADS server on 127.0.0.1 with a fresh `SnapshotCache`; `restart` replaces both
    (a new process, as far as Envoy can tell) on the same port. mTLS is done by grpc's C core
    through `identities.MtlsEndpoint`, as on `meshwarden server --xds-listen`."""

    def __init__(
        self,
        loop: LoopThread,
        pki: Pki,
        impostor: str | None = None,
    ) -> None:
        self.loop, self._pki = loop, pki
        # the DNS name only for grpc's Python client, which checks host names, not SPIFFE IDs;
        # an `impostor` serves with that (workload) SPIFFE ID instead of the server's
        self._credentials = (
            pki.mint(impostor) if impostor else pki.mint_server(dns_names=("localhost",))
        )
        self.port = 0
        self.cache, self._stop = self._start()

    def _start(self) -> tuple[SnapshotCache, Callable[[], Awaitable[None]]]:
        cache = SnapshotCache()
        stop, self.port = self.loop.run(self._serve(cache))
        return cache, stop

    async def _serve(self, cache: SnapshotCache) -> tuple[Callable[[], Awaitable[None]], int]:
        ads = AggregatedDiscovery(cache, workload_authorizer(lambda: {NODE: WEB_ID}), cache)
        credentials = RotatingCredentials(
            self._credentials.key, self._credentials.chain, self._pki.bundle_pem()
        )
        endpoint = MtlsEndpoint(
            "127.0.0.1",
            self.port,
            credentials,
            lambda server: server.add_generic_rpc_handlers((ads_handler(ads),)),
        )
        await endpoint.start()
        return lambda: endpoint.stop(0), endpoint.port

    def stop(self) -> None:
        self.loop.run(self._stop())

    def restart(self) -> None:
        self.stop()
        self.cache, self._stop = self._start()

    def publish(self, snapshot: Snapshot) -> None:
        self.loop.call(lambda: self.cache.set_snapshot(NODE, snapshot))

    def read(self, fn: Callable[[SnapshotCache], Any]) -> Any:
        return self.loop.call(lambda: fn(self.cache))


def write_envoy_credentials(directory: Path, pki: Pki, spiffe_id: str) -> dict[str, str]:
    credentials = pki.mint(spiffe_id)
    files = {
        "chain": directory / "envoy.pem",
        "key": directory / "envoy.key",
        "bundle": directory / "bundle.pem",
    }
    files["chain"].write_bytes(credentials.chain)
    files["key"].write_bytes(credentials.key)
    files["bundle"].write_bytes(pki.bundle_pem())
    return {name: str(path) for name, path in files.items()}


def _ads_cluster(port: int, files: dict[str, str]) -> dict[str, Any]:
    tls = {
        "@type": _T + "transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": files["chain"]},
                    "private_key": {"filename": files["key"]},
                }
            ],
            "validation_context": {
                "trusted_ca": {"filename": files["bundle"]},
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": str(server_spiffe_id(TD))}}
                ],
            },
        },
    }
    h2 = {
        "@type": _T + "upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
    endpoint = {
        "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    }
    return {
        "name": "ads",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2
        },
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
        "load_assignment": {"cluster_name": "ads", "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def bootstrap(port: int, files: dict[str, str], delta: bool, node: str = NODE) -> dict[str, Any]:
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node, "cluster": node.split("/")[0]},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "ads"}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {"clusters": [_ads_cluster(port, files)]},
    }


@dataclass(frozen=True)
class WebConfig:
    """The snapshot's knobs: listener address, upstream port, direct response body."""

    address: str
    port: int
    upstream: int
    body: str = "v1"
    connect_timeout: str = "1s"
    listener_port: int | None = None  # set to an invalid value to make Envoy reject it


def web_snapshot(config: WebConfig, encoder: ResourceEncoder | None = None) -> Snapshot:
    ads = {"ads": {}, "resourceApiVersion": "V3"}
    cluster = {
        "name": "backend",
        "type": "EDS",
        "connectTimeout": config.connect_timeout,
        "edsClusterConfig": {"edsConfig": ads},
    }
    endpoint = {
        "endpoint": {
            "address": {"socketAddress": {"address": "127.0.0.1", "portValue": config.upstream}}
        }
    }
    assignment = {"clusterName": "backend", "endpoints": [{"lbEndpoints": [endpoint]}]}
    hcm = {
        "@type": _T + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "statPrefix": "web",
        "rds": {"routeConfigName": "web-routes", "configSource": ads},
        "httpFilters": [
            {
                "name": "envoy.filters.http.router",
                "typedConfig": {"@type": _T + "filters.http.router.v3.Router"},
            }
        ],
    }
    port = config.port if config.listener_port is None else config.listener_port
    listener = {
        "name": "web",
        "address": {"socketAddress": {"address": config.address, "portValue": port}},
        "filterChains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typedConfig": hcm}
                ]
            }
        ],
    }
    routes = [
        {
            "match": {"prefix": "/direct"},
            "directResponse": {"status": 200, "body": {"inlineString": config.body}},
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
    ]
    route = {
        "name": "web-routes",
        "virtualHosts": [{"name": "all", "domains": ["*"], "routes": routes}],
    }
    encoder = encoder or ResourceEncoder()
    resources = {CLUSTER: [cluster], ENDPOINT: [assignment], LISTENER: [listener], ROUTE: [route]}
    return Snapshot.of(encoder.encode_all(resources))


@contextmanager
def http_upstream(text: str) -> Iterator[int]:
    """A tiny HTTP server on 127.0.0.1 answering every GET with `text`; yields its port."""
    body = text.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
