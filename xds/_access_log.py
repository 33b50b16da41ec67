"""Flow log: sidecars stream access logs (gRPC access log service) to the control plane.

STUB — filled in by the flow-log work (issue 5)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshwarden.xds._translate import TranslationContext


def http_access_logs(ctx: TranslationContext, workload: str, port: int) -> list[dict[str, Any]]:
    """HCM `access_log` entries for an inbound HTTP port ([] when the flow log is off)."""
    return []


def tcp_access_logs(ctx: TranslationContext, workload: str, port: int) -> list[dict[str, Any]]:
    """tcp_proxy `access_log` entries for an inbound tcp port ([] when the flow log is off)."""
    return []
