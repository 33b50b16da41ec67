"""meshwarden.demo: what `meshwarden demo` and the tests run around the control plane — a stand-in
identity provider, sample apps, and an in-memory OTLP trace collector. Not part of the shipped
control plane: `server`, `agent` and `up` never import it (an import-linter contract)."""

from meshwarden.demo._idp import DemoIdp
from meshwarden.demo._live import (
    move_to_free_ports,
    reserve_port,
    rows,
    sample_apps,
    shop_copy,
)
from meshwarden.demo._otlp_sink import OtlpReceiver, ReceivedSpan, otlp_receiver

__all__ = [
    "DemoIdp",
    "OtlpReceiver",
    "ReceivedSpan",
    "move_to_free_ports",
    "otlp_receiver",
    "reserve_port",
    "rows",
    "sample_apps",
    "shop_copy",
]
