"""What translation needs beyond the policies (where secrets, traces, flow logs and ext_authz
calls go), shared by the translator and the filters it assembles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshwarden.xds._tracing import TracingTarget

SDS_CLUSTER = "meshwarden-sds"


@dataclass(frozen=True)
class StaticTls:
    """Certificates from files instead of SDS: for benchmarks and the differential test, which
    exercise authorization without running an agent. Production sidecars always use SDS."""

    certificate_chain: str
    private_key: str
    trust_bundle: str
    trust_domain: str


@dataclass(frozen=True)
class TranslationContext:
    """What translation needs beyond the policies: the SDS cluster the bootstrap defines and the
    JWT bundle (JWKS JSON) of a trust domain, for JwtIssuers with `spiffeTrustDomain`."""

    sds_cluster: str = SDS_CLUSTER
    jwt_bundle: Callable[[str], str | None] = lambda trust_domain: None
    static_tls: StaticTls | None = None
    inline_routes: bool = False  # route configs inside the HCM instead of RDS (static configs)
    # Observability and ext_authz (issue 5). None = off.
    tracing: TracingTarget | None = None  # Envoy's OpenTelemetry tracer → this OTLP collector
    flow_log_cluster: str | None = None  # gRPC access logs → the control plane via this cluster
    flow_log_allowed_percent: float = 100.0  # share of allowed HTTP requests logged (4xx/5xx: all)
    ext_authz_cluster: str | None = None  # ext-authz enforcement asks the engine via this cluster
    # `extAuthz.transport: http`: HTTP ports ask the engine's HTTP/1.1 authz port via this one
    ext_authz_http_cluster: str | None = None
    # gRPC Check goes to the ext_authz front (its h2 side) via this cluster instead, for the
    # workloads whose sidecar declared it (`ext_authz_grpc_declared(workload)`: its bootstrap
    # has the cluster); the others keep `ext_authz_cluster`
    ext_authz_grpc_cluster: str | None = None
    ext_authz_grpc_declared: Callable[[str], bool] = lambda workload: False
