"""Egress in the flow log, translation to parsing: the outbound listener's access log and the
endpoints' host metadata (what `xds/_egress.py` decided) read back from TcpAccessLogEntries as
Envoy would fill them (custom tags from literals and from the chosen endpoint), and the RBAC
shadow rules that count what dry-run egress (and monitor mode) would do to each connection."""

from __future__ import annotations

import datetime as dt
from typing import Any

from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.data.accesslog.v3 import AccessLogCommon, TcpAccessLogEntry
from meshwarden.engine import check_documents, parse_text
from meshwarden.xds import Flow, TranslationContext
from meshwarden.xds._access_log import tcp_flow
from meshwarden.xds._decisions import Verdict
from meshwarden.xds._snapshot import ENDPOINT, LISTENER
from meshwarden.xds._translate import workload_resources

from .test_egress_outbound import MESH, egress

STARTED = dt.datetime(2026, 12, 7, 1, 0, 0, tzinfo=dt.UTC)
WEB = "spiffe://example.org/ns/shop/sa/web-1"
PRIMARY = "spiffe://example.org/ns/shop/sa/db-primary"


def resources(text: str) -> dict[str, Any]:
    documents, problems = parse_text(text)
    compiled, found = check_documents(documents)
    assert compiled is not None and not problems, [*problems, *found]
    ctx = TranslationContext(flow_log_cluster="meshwarden-xds")
    return workload_resources(compiled, "shop/web-1", ctx)


def outbound_filters(text: str) -> list[dict[str, Any]]:
    (listener,) = [r for r in resources(text)[LISTENER] if r["name"] == "out:15432"]
    return list(listener["filterChains"][0]["filters"])


def entry_from(text: str, endpoint: int | None, details: str = "") -> Flow:
    """The flow of one connection to endpoint number `endpoint` of web-1's upstream (None: no
    endpoint chosen), its custom tags filled the way Envoy fills them from the config."""
    proxy = outbound_filters(text)[-1]["typedConfig"]
    (log,) = proxy["accessLog"]
    host: dict[str, str] = {}
    upstream = None
    if endpoint is not None:
        (load,) = resources(text)[ENDPOINT]
        chosen = load["endpoints"][0]["lbEndpoints"][endpoint]
        host = chosen["metadata"]["filterMetadata"]["meshwarden"]
        where = chosen["endpoint"]["address"]["socketAddress"]
        upstream = Address(
            socket_address=SocketAddress(address=where["address"], port_value=where["portValue"])
        )
    tags = {}
    for tag in log["typedConfig"]["commonConfig"]["customTags"]:
        if "literal" in tag:
            tags[tag["tag"]] = tag["literal"]["value"]
        elif host.get(tag["tag"]):
            tags[tag["tag"]] = host[tag["tag"]]
    common = AccessLogCommon(
        downstream_direct_remote_address=Address(
            socket_address=SocketAddress(address="127.0.0.1", port_value=40000)
        ),
        upstream_remote_address=upstream,
        start_time=STARTED,
        custom_tags=tags,
        connection_termination_details=details,
    )
    return tcp_flow(bytes(TcpAccessLogEntry(common_properties=common)), "shop/web-1")


def test_a_connection_to_an_allowed_endpoint_names_the_endpoint_and_the_egress_rule() -> None:
    text = MESH + egress("ALLOW", "{workloads: {matchLabels: {tier: primary}}}")
    flow = entry_from(text, 0)
    assert (flow.direction, flow.reporter, flow.workload, flow.port) == (
        "egress",
        "shop/web-1",
        "shop/db-1",
        5432,
    )
    assert (flow.identity, flow.verdict) == (WEB, Verdict("allow", "shop/web-allow", 0))
    record = flow.to_json()
    assert (record["sourceWorkload"], record["service"], record["destinationIdentity"]) == (
        "shop/web-1",
        "shop/db",
        PRIMARY,
    )
    assert record["destinationAddress"] == "127.0.0.11:5432" and record["dryRun"] is None


def test_a_connection_to_an_upstream_egress_closes_is_denied_by_the_rule_without_endpoint() -> None:
    flow = entry_from(MESH + egress("DENY", "{namespaces: [shop]}"), None)
    assert (flow.workload, flow.verdict) == ("shop/db", Verdict("deny", "shop/web-deny", 0))
    assert flow.to_json()["destinationIdentity"] is None and flow.denied


def test_the_rbac_filter_that_refused_a_connection_names_the_cause() -> None:
    text = MESH + egress("DENY", "{namespaces: [shop]}")
    flow = entry_from(text, None, "rbac_access_denied_matched_policy[shop/web-deny#0]")
    assert flow.verdict == Verdict("deny", "shop/web-deny", 0)


def test_a_connection_no_workload_served_is_allowed_by_nothing_known() -> None:
    text = MESH.replace("], ports: [{port: 5432}]}", "], ports: [{port: 1}]}")
    flow = entry_from(text, None)
    assert (flow.workload, flow.verdict.decision, flow.verdict.policy) == (
        "shop/db",
        "allow",
        "unknown",
    )


DRY_DENY_PRIMARY = """\
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: try-lockdown, namespace: shop}
spec:
  direction: egress
  action: DENY
  mode: dry-run
  selector: {matchLabels: {app: web}}
  rules: [{to: [{workloads: {matchLabels: {tier: primary}}}]}]
"""


def _shadow(filters: list[dict[str, Any]]) -> tuple[str, str, str] | None:
    config = filters[0]["typedConfig"]
    if "shadowMatcher" not in config:
        return None
    (matcher,) = config["shadowMatcher"]["matcherList"]["matchers"]
    action = matcher["onMatch"]["action"]["typedConfig"]
    return config["shadowRulesStatPrefix"], action["action"], action["name"]


def test_a_dry_run_egress_deny_is_reported_per_endpoint_while_traffic_passes() -> None:
    text = MESH + DRY_DENY_PRIMARY
    primary, replica = entry_from(text, 0), entry_from(text, 1)
    assert primary.verdict == Verdict("allow", "default:allow", None, "deny", "shop/try-lockdown")
    assert replica.verdict == Verdict("allow", "default:allow", None, "allow", "default:allow")
    # the connection itself would still pass (to the replica): the shadow rule allows it
    filters = outbound_filters(text)
    assert "matcher" not in filters[0]["typedConfig"]
    assert _shadow(filters) == ("meshwarden_egress_dryrun_", "ALLOW", "default:allow")


def test_the_shadow_rule_denies_when_dry_run_would_deny_every_endpoint() -> None:
    text = MESH + DRY_DENY_PRIMARY.replace("{tier: primary}", "{app: db}")
    assert _shadow(outbound_filters(text)) == (
        "meshwarden_egress_dryrun_",
        "DENY",
        "shop/try-lockdown",
    )


def test_monitor_mode_lets_an_egress_deny_pass_and_records_it_as_would_deny() -> None:
    monitor = "{trustDomain: example.org, namespaces: {shop: {defaultMode: dry-run}}}"
    text = MESH.replace("{trustDomain: example.org}", monitor) + egress(
        "DENY", "{namespaces: [shop]}"
    )
    filters = outbound_filters(text)
    assert "matcher" not in filters[0]["typedConfig"]  # nothing closes the upstream
    assert _shadow(filters) == ("meshwarden_egress_dryrun_", "DENY", "shop/web-deny")
    flow = entry_from(text, 1)
    assert flow.verdict == Verdict("allow", "default:allow", None, "deny", "shop/web-deny")


def test_without_dry_run_egress_there_are_no_shadow_rules() -> None:
    filters = outbound_filters(MESH + egress("DENY", "{namespaces: [shop]}"))
    assert _shadow(filters) is None
    assert [f["name"] for f in outbound_filters(MESH)] == ["envoy.filters.network.tcp_proxy"]
