"""Compiling a test's policy text and loading node h1's rendered filter into a lab's host
namespace, in either form (nftables table; iptables chains hooked into INPUT and OUTPUT)."""

from __future__ import annotations

from collections.abc import Callable

from meshwarden.engine import CompiledMesh, check_documents, parse_text
from meshwarden.render import OUT_CHAIN, node_filter, render_iptables, render_nftables

from ._lab import Lab


def compile_text(text: str) -> CompiledMesh:
    documents, problems = parse_text(text, "policy.yaml")
    assert not problems, problems
    mesh, found = check_documents(documents)
    assert mesh is not None, found
    return mesh


def load_nftables(net: Lab, mesh: CompiledMesh) -> None:
    net.sh("nft", "-f", "-", ns=net.host, text=render_nftables(node_filter(mesh, "h1")))


def load_iptables(net: Lab, mesh: CompiledMesh) -> None:
    """Fill the chains, then hook them once (a second load only refills them)."""
    net.sh(
        "iptables-restore", "--noflush", ns=net.host, text=render_iptables(node_filter(mesh, "h1"))
    )
    for hook, chain in (("INPUT", "MESHWARDEN"), ("OUTPUT", OUT_CHAIN)):
        if f"-j {chain}" not in net.sh("iptables", "-S", hook, ns=net.host):
            net.sh("iptables", "-I", hook, "-j", chain, ns=net.host)


LOAD: dict[str, Callable[[Lab, CompiledMesh], None]] = {
    "nftables": load_nftables,
    "iptables": load_iptables,
}
