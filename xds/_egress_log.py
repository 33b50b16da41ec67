"""Egress in the flow log: what the source sidecar's outbound listeners report, and how.

Each outbound listener's tcp_proxy logs every connection to the control plane (the same gRPC
access log service as the inbound side) with custom tags: `direction: egress`, the upstream
Service and port, and the source's identity, all literal; the endpoint's workload, identity and
egress verdict (and the dry-run one) come from the host metadata of the endpoint Envoy chose
(`xds/_egress.py` puts them there). When egress closes the upstream there is no endpoint: the
listener carries the closing verdict as literal tags instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshwarden.engine import Direction, Effect
from meshwarden.xds._context import TranslationContext
from meshwarden.xds._decisions import Verdict, split_action
from meshwarden.xds._egress import HOST_METADATA, EndpointEgress, UpstreamEgress, cause_of
from meshwarden.xds._envoy import allowed_sample, load_assignment

DIRECTION_TAG = "direction"
SERVICE_TAG = "egress.service"
PORT_TAG = "egress.port"
SOURCE_TAG = "egress.source"
WORKLOAD_TAG = "egress.workload"
IDENTITY_TAG = "egress.identity"
VERDICT_TAG = "egress.verdict"
DRY_RUN_TAG = "egress.dry_run"
_HOST_TAGS = (WORKLOAD_TAG, IDENTITY_TAG, VERDICT_TAG, DRY_RUN_TAG)
_T = "type.googleapis.com/"
UNATTRIBUTED = "unknown"


@dataclass(frozen=True, slots=True)
class EgressEnds:
    """Where an egress record went: the Service the source asked for and, when Envoy reached
    an endpoint, its identity and address (None when egress closed the upstream)."""

    source_workload: str
    service: str | None
    destination_identity: str | None
    destination_address: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "sourceWorkload": self.source_workload,
            "service": self.service,
            "destinationIdentity": self.destination_identity,
            "destinationAddress": self.destination_address,
        }


def _spelled(verdict: Verdict | None, dry: bool = False) -> str:
    """`allow ns/name#0` (a verdict, or its dry-run half with `dry`); "" for none."""
    if verdict is None:
        return ""
    if dry:
        if verdict.dry_run_decision is None:
            return ""
        return f"{verdict.dry_run_decision} {verdict.dry_run_policy}"
    return f"{verdict.decision} {cause_of(verdict)}"


def _read(spelled: str) -> tuple[Effect, str, int | None] | None:
    decision, _, cause = spelled.partition(" ")
    if decision not in (Effect.ALLOW, Effect.DENY) or not cause:
        return None
    policy, rule = split_action(cause)
    return Effect(decision), policy, rule


def endpoint_metadata(endpoint: EndpointEgress) -> dict[str, Any]:
    """The host metadata of one endpoint: its workload, identity and egress verdict."""
    fields = {
        WORKLOAD_TAG: endpoint.workload.ref,
        IDENTITY_TAG: endpoint.workload.identity,
        VERDICT_TAG: _spelled(endpoint.verdict),
        DRY_RUN_TAG: _spelled(endpoint.verdict, dry=True),
    }
    return {"filterMetadata": {HOST_METADATA: fields}}


def egress_load_assignment(cluster: str, egress: UpstreamEgress, port: int) -> dict[str, Any]:
    """The endpoints egress lets the source reach, each with its verdict as host metadata."""
    reachable = [e for e in egress.endpoints if e.allowed]
    load = load_assignment(cluster, [(str(e.workload.addresses[0]), port) for e in reachable])
    for lb_endpoint, endpoint in zip(load["endpoints"][0]["lbEndpoints"], reachable, strict=True):
        lb_endpoint["metadata"] = endpoint_metadata(endpoint)
    return load


def _literal(tag: str, value: str) -> dict[str, Any]:
    return {"tag": tag, "literal": {"value": value}}


def _from_host(tag: str) -> dict[str, Any]:
    key = {"key": HOST_METADATA, "path": [{"key": tag}]}
    return {"tag": tag, "metadata": {"kind": {"host": {}}, "metadataKey": key}}


def egress_access_logs(
    ctx: TranslationContext,
    source: Any,
    service: str,
    port: int,
    egress: UpstreamEgress,
) -> list[dict[str, Any]]:
    """tcp_proxy `access_log` of the outbound listener to `service`:`port` of `source` (a
    Workload); [] when the flow log is off. Connections through an upstream egress leaves open
    are all allowed: `--flow-log-sample` applies to them; every refused one is logged."""
    if ctx.flow_log_cluster is None:
        return []
    tags = [
        _literal(DIRECTION_TAG, Direction.EGRESS),
        _literal(SERVICE_TAG, service),
        _literal(PORT_TAG, str(port)),
        _literal(SOURCE_TAG, source.identity),
    ]
    closing = egress.closing
    if closing is None:
        tags += [_from_host(tag) for tag in _HOST_TAGS]
    else:
        tags += [_literal(VERDICT_TAG, _spelled(closing))]
        dry = egress.dry_run
        if dry is not None:
            tags += [_literal(DRY_RUN_TAG, f"{dry.decision} {dry.policy}")]
    common = {
        "logName": f"egress:{source.ref}:{service}:{port}",
        "transportApiVersion": "V3",
        "grpcService": {"envoyGrpc": {"clusterName": ctx.flow_log_cluster}},
        "bufferFlushInterval": "0.25s",
        "customTags": tags,
    }
    config = {
        "@type": _T + "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig",
        "commonConfig": common,
    }
    log: dict[str, Any] = {"name": "envoy.access_loggers.tcp_grpc", "typedConfig": config}
    if closing is None and ctx.flow_log_allowed_percent < 100:
        log["filter"] = allowed_sample(ctx.flow_log_allowed_percent)
    return [log]


def is_egress(tags: Mapping[str, str]) -> bool:
    return tags.get(DIRECTION_TAG) == Direction.EGRESS


def egress_verdict(tags: Mapping[str, str], refused_by: str | None) -> Verdict:
    """The verdict of one egress connection: the RBAC action that refused it (`refused_by`),
    else the verdict its endpoint or listener carried; allow `unknown` when it reached none
    and nothing closed it (no workload serves the upstream)."""
    dry = _read(tags.get(DRY_RUN_TAG, ""))
    dry_decision, dry_policy = (dry[0], _cause(dry)) if dry else (None, None)
    if refused_by is not None:
        policy, rule = split_action(refused_by)
        return Verdict(Effect.DENY, policy, rule, dry_decision, dry_policy)
    found = _read(tags.get(VERDICT_TAG, ""))
    if found is None:
        return Verdict(Effect.ALLOW, UNATTRIBUTED, None, dry_decision, dry_policy)
    return Verdict(found[0], found[1], found[2], dry_decision, dry_policy)


def _cause(read: tuple[Effect, str, int | None]) -> str:
    return read[1] if read[2] is None else f"{read[1]}#{read[2]}"


def egress_ends(
    tags: Mapping[str, str], reporter: str, upstream: tuple[str | None, int | None]
) -> EgressEnds:
    host, port = upstream
    reached = tags.get(WORKLOAD_TAG)
    return EgressEnds(
        reporter,
        tags.get(SERVICE_TAG),
        tags.get(IDENTITY_TAG) if reached else None,
        f"{host}:{port}" if host and reached else None,
    )
