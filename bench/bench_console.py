"""Web console benchmark: the cost of one `GET /api/graph` (query the flow log, build the graph,
encode JSON) on a full flow log, against the baseline of `GET /flows` on the same records (query
and encode every record), same run. Both run on the control plane's event loop, so this is the
loop time a console client costs per redraw (the page redraws at most once a second).

    .venv/bin/python bench/bench_console.py            # 10,000 records (the default log size)
    .venv/bin/python bench/bench_console.py --records 2000 --json

Records: `--records` flows from 200 peers (workloads of a generated mesh, plus plaintext
addresses) to 100 workloads on two ports, a third denied, some would-deny.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from meshwarden.engine import Effect
from meshwarden.xds import Flow, Verdict

from meshwarden._console_graph import GraphQuery, graph
from meshwarden._flows import FlowLog, FlowQuery
from meshwarden._policies import Policies

MESH = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {trustDomain: bench.test, defaultPolicy: deny}
"""
WORKLOAD = """\
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: w{n}, namespace: ns{ns}, labels: {{app: w{n}}}}}
spec:
  addresses: [10.{a}.{b}.1]
  ports: [{{port: 8080, protocol: http}}, {{port: 9000, protocol: tcp}}]
"""


def _policies(root: Path, workloads: int) -> Policies:
    text = MESH + "".join(
        WORKLOAD.format(n=n, ns=n % 10, a=n // 250, b=n % 250) for n in range(workloads)
    )
    (root / "mesh.yaml").write_text(text)
    policies = Policies(root, report=io.StringIO(), settle=0)
    policies.reload_if_changed()
    assert policies.mesh is not None, policies.status.errors
    return policies


def _flows(count: int, workloads: int) -> list[Flow]:
    now = time.time()
    verdicts = [
        Verdict(Effect.ALLOW, "ns0/access", 0),
        Verdict(Effect.DENY, "default:deny"),
        Verdict(Effect.ALLOW, "ns0/access", 1, Effect.DENY, "ns0/tighten"),
    ]
    out = []
    for i in range(count):
        peer = i % 200
        identity = f"spiffe://bench.test/ns/ns{peer % 10}/sa/w{peer}" if peer < 150 else None
        ip = None if identity else f"192.0.2.{peer}"
        out.append(
            Flow(
                now - (count - i) * 0.01,
                f"ns{i % 10}/w{(i * 7) % workloads}",
                8080 if i % 3 else 9000,
                identity,
                ip,
                "http",
                "GET",
                "/x",
                200,
                verdicts[i % 3],
                None,
            )
        )
    return out


def _time(run: object, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        policies = _policies(Path(tmp), 100)
    log = FlowLog(args.records)
    log.add(_flows(args.records, 100))
    window = FlowQuery(since=15 * 60)

    def flows_route() -> bytes:
        return json.dumps({"flows": [f.to_json() for f in log.query(window)]}).encode()

    def graph_route() -> bytes:
        view = graph(policies.registry, log.query(window), GraphQuery())
        return json.dumps(view).encode()

    baseline = _time(flows_route, args.rounds)
    console = _time(graph_route, args.rounds)
    edges = len(graph(policies.registry, log.query(window), GraphQuery())["edges"])
    result = {
        "records": args.records,
        "edges": edges,
        "flowsMs": round(baseline * 1000, 1),
        "graphMs": round(console * 1000, 1),
        "ratio": round(console / baseline, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.records} records, {edges} edges: GET /api/graph {result['graphMs']} ms, "
            f"GET /flows {result['flowsMs']} ms (baseline), ratio {result['ratio']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
