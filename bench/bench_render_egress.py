"""Rendering cost of egress: the nftables table of a node in a mesh of 1,000 workloads (50
nodes of 20, each workload with a uid selector, an address and a sidecar port behind an app
port), with egress policies against the same mesh without them, measured in the same run.

With egress every workload on the node gets its allowed destinations decided by the engine once
per destination atom (CIDR and port boundaries; each mesh workload's address by its identity),
so the cost grows with the mesh's addresses and the rules' boundaries, not with packets.

Run: `.venv/bin/python bench/bench_render_egress.py [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshwarden.engine import CompiledMesh, check_documents, parse_text
from meshwarden.render import node_filter, render_nftables

WORKLOADS, NODES, NAMESPACES = 1_000, 50, 10


def documents(egress: bool) -> list[str]:
    """The mesh as files of at most 500 documents (the reader's per-file limit is 1,000)."""
    parts = [
        "apiVersion: meshwarden.io/v1alpha1\nkind: Mesh\nmetadata: {name: mesh}\n"
        "spec: {trustDomain: bench.example.org}\n"
    ]
    for i in range(WORKLOADS):
        ns, node = f"ns{i % NAMESPACES}", f"node-{i % NODES}"
        address = f"10.{i // 250}.{i % 250}.{10 + i % 7}"
        parts.append(
            f"apiVersion: meshwarden.io/v1alpha1\nkind: Workload\n"
            f"metadata: {{name: w{i}, namespace: {ns}, labels: {{app: w{i % 20}}}}}\n"
            f"spec: {{addresses: [{address}], ports: [{{port: 8443, targetPort: 8080}}], "
            f'selectors: ["node:{node}", "unix:uid:{2000 + i}"]}}\n'
        )
    for n in range(NAMESPACES if egress else 0):
        parts.append(
            "apiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: out, namespace: ns{n}}}\n"
            "spec:\n  direction: egress\n  rules:\n"
            "  - {to: [{ipBlocks: [0.0.0.0/0], notIpBlocks: [10.0.0.0/8]}], ports: [53], "
            "protocols: [udp]}\n"
            "  - {to: [{ipBlocks: [203.0.113.0/24]}], ports: [443]}\n"
            f"  - {{to: [{{workloads: {{matchLabels: {{app: w{n}}}}}}}], ports: [8443]}}\n"
            f"  - {{to: [{{namespaces: [ns{(n + 1) % NAMESPACES}]}}], ports: ['9000-9100']}}\n"
        )
    return ["---\n".join(parts[i : i + 500]) for i in range(0, len(parts), 500)]


def compiled(texts: list[str]) -> CompiledMesh:
    docs = []
    for i, text in enumerate(texts):
        parsed, problems = parse_text(text, f"bench-{i}.yaml")
        assert not problems, problems[:3]
        docs += parsed
    mesh, found = check_documents(docs)
    assert mesh is not None, found[:3]
    return mesh


def render_seconds(mesh: CompiledMesh, node: str) -> float:
    start = time.perf_counter()
    render_nftables(node_filter(mesh, node))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    meshes = {name: compiled(documents(name == "egress")) for name in ("without", "egress")}
    gc.collect()
    gc.freeze()  # as the server does after a reload: the compiled meshes are never walked again
    times: dict[str, list[float]] = {name: [] for name in meshes}
    for r in range(args.rounds):
        order = list(meshes) if r % 2 == 0 else list(reversed(meshes))
        for name in order:
            times[name].append(render_seconds(meshes[name], f"node-{r % NODES}"))
    text = render_nftables(node_filter(meshes["egress"], "node-0"))
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"mesh: {WORKLOADS} workloads on {NODES} nodes; table of one node (20 workloads)")
    for name, samples in times.items():
        print(f"  {name:8} median {statistics.median(samples) * 1000:8.1f} ms")
    ratio = statistics.median(times["egress"]) / statistics.median(times["without"])
    print(f"ratio egress / without: {ratio:.1f}x; table with egress: {len(text) // 1024} KiB")


if __name__ == "__main__":
    main()
