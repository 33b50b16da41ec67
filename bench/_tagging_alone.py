"""bench_tracing's tagging-alone figure: what the decision tagging filter costs a request that is
not sampled, with nothing else in the path. Three single-listener Envoys, each pinned to the
sidecar CPU, answer wrk's plain HTTP with a direct response through an HCM tracing at 1 %
(requests carry no traceparent, so 99 % are not sampled):

- none: no tagging filter (the baseline);
- always: the Lua filter on every request (as before requests not sampled skipped it);
- matcher: the filter as translated — behind the matcher that skips requests not sampled.

Envoy's CPU per request, summed over interleaved rounds; the differences against `none` are the
filter's cost. The TLS, RBAC and the other sidecars of the main measurement are left out: they
cost far more than the filter and their noise hides it on a shared machine.
"""

from __future__ import annotations

from typing import Any

import _harness as harness
from _harness import Layout, Processes, progress
from meshwarden.xds import TracingTarget
from meshwarden.xds._tracing import (
    TRACING_CLUSTER,
    decision_tags_filter,
    hcm_tracing,
    tracing_clusters,
)

_T = "type.googleapis.com/"


def _listener(port: int, tagging: list[dict[str, Any]], target: TracingTarget) -> dict[str, Any]:
    router_type = _T + "envoy.extensions.filters.http.router.v3.Router"
    router = {"name": "router", "typedConfig": {"@type": router_type}}
    route = {"match": {"prefix": "/"}, "directResponse": {"status": 200}}
    hcm = {
        "@type": _T
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "statPrefix": "tagging",
        "routeConfig": {"virtualHosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "tracing": hcm_tracing(target, "bench/server", 8080, "0" * 16),
        "httpFilters": [*tagging, router],
    }
    address = {"socketAddress": {"address": "127.0.0.1", "portValue": port}}
    chain = {"filters": [{"name": "hcm", "typedConfig": hcm}]}
    return {"name": "tagging", "address": address, "filterChains": [chain]}


def tagging_alone(
    otlp_port: int, procs: Processes, layout: Layout, seconds: float, rounds: int
) -> dict[str, float]:
    """config → Envoy CPU µs per request (none, always, matcher)."""
    target = TracingTarget("127.0.0.1", otlp_port, sampling=1.0)
    wrapped = decision_tags_filter()
    filters = {
        "none": [],
        "always": [wrapped["typedConfig"]["extensionConfig"]],
        "matcher": [wrapped],
    }
    ports = {name: harness.free_port() for name in filters}
    [otlp] = [c for c in tracing_clusters(target) if c["name"] == TRACING_CLUSTER]
    for name, tagging in filters.items():
        config = {
            "staticResources": {
                "listeners": [_listener(ports[name], tagging, target)],
                "clusters": [otlp],
            },
            "layeredRuntime": {
                "layers": [{"name": "tracer", "staticLayer": harness.TRACER_RUNTIME}]
            },
        }
        admin = procs.envoy(f"tagging-{name}", config, layout.server)
        procs.wait_ready(f"tagging-{name}", admin)
    cpu = dict.fromkeys(filters, 0.0)
    requests = dict.fromkeys(filters, 0)
    names = list(filters)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            progress(f"tagging alone, round {r + 1}/{rounds}: {name} ({seconds:g} s)")
            before = procs.cpu_seconds(f"tagging-{name}")
            url = f"http://127.0.0.1:{ports[name]}/"
            out = harness.wrk(url, seconds, 4, procs.folder, layout.others)
            cpu[name] += procs.cpu_seconds(f"tagging-{name}") - before
            requests[name] += out["requests"]
    return {name: cpu[name] * 1e6 / max(1, requests[name]) for name in names}
