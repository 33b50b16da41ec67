"""meshwarden.render: pure renderers of a node's packet filter from the compiled mesh.

`node_filter(mesh, node)` computes what the node's filter must do (its `egress`, what may
leave: `node_egress`); `render_nftables`,
`render_iptables`, `render_aws_security_group` and `render_gcp_firewall` format it. No process is
run and nothing is applied here: applying a table is the agent's job.
"""

from meshwarden.render._cloud import render_aws_security_group, render_gcp_firewall
from meshwarden.render._egress import NodeEgress, SourceEgress, node_egress
from meshwarden.render._filter import NodeFilter, PortRule, node_filter, sidecar_sources
from meshwarden.render._ipt_egress import OUT_CHAIN
from meshwarden.render._iptables import (
    DEFAULT_CHAIN,
    DOCKER_CHAIN,
    IptablesOptions,
    render_iptables,
)
from meshwarden.render._nftables import TABLE, render_nftables
from meshwarden.render._space import EgressEntry

__all__ = [
    "DEFAULT_CHAIN",
    "DOCKER_CHAIN",
    "OUT_CHAIN",
    "TABLE",
    "EgressEntry",
    "IptablesOptions",
    "NodeEgress",
    "NodeFilter",
    "PortRule",
    "SourceEgress",
    "node_egress",
    "node_filter",
    "render_aws_security_group",
    "render_gcp_firewall",
    "render_iptables",
    "render_nftables",
    "sidecar_sources",
]
