"""Packet-filter cost per new connection, in network namespaces: meshwarden's nftables table
(verdict map + interval sets) against the linear iptables chain the same policy renders to, with
10 / 1,000 / 10,000 IP rules, measured in the same run (rounds interleaved).

Each configuration admits the client's range through one Host rule placed after N-1 rules for
other ranges (so a linear chain walks all of them), on a port with a listener in the host
namespace. Reported: median TCP connect latency (SYN through the filter, SYN-ACK back) over many
connects, and the ratios @10,000 / @10. Established packets are accepted before any per-rule
lookup in both forms, so bulk throughput of an open connection does not depend on the rule count;
the per-rule cost is paid once per new connection, which is what is measured.

Run as root: `make bench` or `.venv/bin/python bench/bench_packet_filter.py [--connects N]`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshwarden.engine import check_documents, parse_text
from meshwarden.render import node_filter, render_iptables, render_nftables

from tests.netns._lab import CLIENT_IPS, HOST_IP, Lab

SIZES = (10, 1_000, 10_000)
PORT = 8080
CLIENT = CLIENT_IPS[0]
TIMER = """
import json, socket, struct, sys, time
target, port, count, source = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT piling up over many connects
samples = []
for _ in range(count):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    sock.bind((source, 0))
    start = time.perf_counter()
    sock.connect((target, port))
    samples.append(time.perf_counter() - start)
    sock.close()
print(json.dumps(samples))
"""


def host_policy(rules: int) -> str:
    """A Host with SSH for management and `rules` IP rules on PORT: rules-1 ranges that are not
    the client's (numerically before it, so a linear chain tests them first), then the client's."""
    others = [ipaddress.IPv4Network((0x0A000000 + 2 * i, 32)) for i in range(rules - 1)]
    lines = [f"  - {{ports: [{PORT}], from: [{{ipBlocks: [{n}]}}]}}" for n in others]
    lines.append(f"  - {{ports: [{PORT}], from: [{{ipBlocks: [{CLIENT}/32]}}]}}")
    head = "apiVersion: meshwarden.io/v1alpha1\nkind: Host\nmetadata: {name: h1}\nspec:\n"
    return f"{head}  addresses: [{HOST_IP}]\n  ingress:\n  - {{ports: [22]}}\n" + "\n".join(lines)


def rendered(rules: int) -> tuple[str, str]:
    documents, problems = parse_text(host_policy(rules), "bench.yaml")
    mesh, found = check_documents(documents)
    assert mesh is not None and not problems, problems + found
    nf = node_filter(mesh, "h1")
    return render_nftables(nf), render_iptables(nf)


def use_nftables(lab: Lab, table: str) -> None:
    lab.sh("iptables", "-F", "INPUT", ns=lab.host)
    lab.sh("nft", "-f", "-", ns=lab.host, text=table)


def use_iptables(lab: Lab, chain: str) -> None:
    drop_table = "table inet meshwarden\ndelete table inet meshwarden\n"  # present or not
    lab.sh("nft", "-f", "-", ns=lab.host, text=drop_table)
    lab.sh("iptables-restore", "--noflush", ns=lab.host, text=chain)
    lab.sh("iptables", "-A", "INPUT", "-j", "MESHWARDEN", ns=lab.host)


def connect_us(lab: Lab, connects: int) -> tuple[float, float]:
    """(median, 10th percentile) of one series of connects, in µs. The low percentile is the
    path's own cost with less of the scheduling noise of a shared machine."""
    out = lab.sh(
        sys.executable, "-c", TIMER, HOST_IP, str(PORT), str(connects), CLIENT, ns=lab.client
    )
    samples = sorted(json.loads(out))
    return statistics.median(samples) * 1e6, samples[len(samples) // 10] * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connects", type=int, default=2000, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()
    files = {n: rendered(n) for n in SIZES}
    lab = Lab()
    try:
        lab.start()
        lab.serve(lab.host, f"tcp:{PORT}")
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        configurations = [(kind, n) for n in SIZES for kind in ("nftables", "iptables")]
        for round_ in range(args.rounds):  # interleaved, in a different order each round
            for kind, n in random.Random(round_).sample(configurations, len(configurations)):
                apply = use_nftables if kind == "nftables" else use_iptables
                apply(lab, files[n][0 if kind == "nftables" else 1])
                results.setdefault((kind, n), []).append(connect_us(lab, args.connects))
    finally:
        lab.close()
    report(results, args)
    return 0


def report(
    results: dict[tuple[str, int], list[tuple[float, float]]], args: argparse.Namespace
) -> None:
    print(
        f"TCP connect latency (µs): median over {args.rounds} rounds of each series' p50 / p10 "
        f"({args.connects} connects per series)"
    )
    print(f"{'IP rules':>10} {'nftables (sets) p50/p10':>26} {'iptables (linear) p50/p10':>28}")
    figure = {
        (key, stat): statistics.median(v[stat] for v in values)
        for key, values in results.items()
        for stat in (0, 1)
    }
    for n in SIZES:
        nft = f"{figure[(('nftables', n), 0)]:.1f} / {figure[(('nftables', n), 1)]:.1f}"
        ipt = f"{figure[(('iptables', n), 0)]:.1f} / {figure[(('iptables', n), 1)]:.1f}"
        print(f"{n:>10,} {nft:>26} {ipt:>28}")
    for kind in ("nftables", "iptables"):
        ratios = [figure[((kind, SIZES[-1]), s)] / figure[((kind, SIZES[0]), s)] for s in (0, 1)]
        print(
            f"{kind}: @{SIZES[-1]:,} / @{SIZES[0]} = {ratios[0]:.3f} (p50), {ratios[1]:.3f} (p10)"
        )


if __name__ == "__main__":
    sys.exit(main())
