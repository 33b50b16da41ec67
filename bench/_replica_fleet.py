"""What the replica benchmarks with sidecars share (bench_replica_envoys, bench_replica_failover):
a three-member etcd with `meshwarden server --store` replicas, or one server on a directory, and
the fleet of real Envoys (`meshwarden sidecar --user UID`, one uid per workload, attested by one
`meshwarden agent`) that connects to them. Every process is a subprocess, as an operator runs it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from threading import Thread
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "store"))

from bench_propagation import (  # noqa: E402
    MeshShape,
    free_ports,
    mesh_documents,
    root_policy,
    terminate_on_sigterm,
)
from etcd_cluster import EtcdCluster, start_cluster  # noqa: E402

MESHWARDEN = [sys.executable, "-m", "meshwarden"]
TRUST_DOMAIN = "propagation.bench"  # bench_propagation's mesh


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(*args: str, timeout: float = 120) -> str:
    done = subprocess.run([*MESHWARDEN, *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"meshwarden {' '.join(args[:2])}: {done.stderr.strip()}")
    return done.stdout


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return dict(json.loads(reply.read()))


@contextmanager
def work_dir(prefix: str, keep: bool, result: dict[str, Any]) -> Iterator[Path]:
    """The run's temp dir, removed afterwards unless `keep` or the run failed (then its logs
    are kept and named); SIGTERM stops the run like Ctrl-C; the load average at the end goes
    into `result`."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    ok = False
    try:
        with terminate_on_sigterm():
            yield work
        ok = True
    finally:
        result["loadavg_end"] = os.getloadavg()[0]
        if ok and not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"logs kept in {work}")


def emit(result: dict[str, Any], as_json: bool, report: Callable[[dict[str, Any]], None]) -> int:
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        report(result)
    return 0


def server_args(
    url: str, kek: Path, data_dir: Path, listen: str = "127.0.0.1:0", ads: str = "127.0.0.1:0"
) -> list[str]:
    """`meshwarden server` as one replica on the store at `url` (node API on `listen`, the
    sidecars' ADS on `ads`)."""
    return [
        "server",
        "--store",
        url,
        "--kek-file",
        str(kek),
        "--data-dir",
        str(data_dir),
        "--listen",
        listen,
        "--xds-listen",
        ads,
        "--health",
        "127.0.0.1:0",
    ]


def wait(predicate: Callable[[], Any], timeout: float, what: str, pause: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(pause)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


# ------------------------------------------------------------------ the mesh


@dataclass(frozen=True)
class FleetMesh:
    """bench_propagation's mesh of `workloads` (10 per app, an upstream to the next app), each
    workload with its own uid selector and its app behind one local HTTP port."""

    shape: MeshShape
    uids: tuple[int, ...]
    app_port: int

    @classmethod
    def make(cls, workloads: int, net: str, first_uid: int) -> FleetMesh:
        ports = free_ports(workloads + 1)
        shape = MeshShape(workloads, net, ports[1:])
        return cls(shape, tuple(first_uid + i for i in range(workloads)), ports[0])

    def workloads(self) -> list[str]:
        """`ns/name` of workload i, in order."""
        shape = self.shape
        return [
            f"{shape.namespace(i % shape.apps)}/app{i % shape.apps}-{i}"
            for i in range(shape.workloads)
        ]

    def files(self, round_number: int) -> dict[str, bytes]:
        docs = mesh_documents(self.shape)
        for i, uid in enumerate(self.uids):  # docs[0] is the Mesh, then the workloads in order
            docs[i + 1] = (
                docs[i + 1]
                .replace("spec:\n", f"spec:\n  selectors: ['unix:uid:{uid}']\n", 1)
                .replace("targetPort: 18080", f"targetPort: {self.app_port}")
            )
        files = {
            f"mesh-{n // 500:03d}.yaml": "---\n".join(docs[n : n + 500]).encode()
            for n in range(0, len(docs), 500)
        }
        files["root-policy.yaml"] = root_policy(round_number).encode()
        return files

    def write(self, directory: Path, round_number: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.files(round_number).items():
            temp = directory / f".{name}.tmp"
            temp.write_bytes(data)
            os.replace(temp, directory / name)


# ------------------------------------------------------------------ processes


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[str]
    log_file: Path
    ready: str = ""
    lines: list[tuple[float, str]] = field(default_factory=list)  # (perf_counter, stderr line)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-2000:]

    def _keep_stderr(self) -> None:
        assert self.popen.stderr is not None
        with self.log_file.open("w") as out:
            for line in self.popen.stderr:
                self.lines.append((time.perf_counter(), line.rstrip("\n")))
                out.write(line)
                out.flush()

    def first_line(self, since: float, prefix: str) -> float | None:
        """When the first stderr line starting with `prefix` came after `since`."""
        return next(
            (t for t, line in list(self.lines) if t > since and line.startswith(prefix)), None
        )


@dataclass
class Processes:
    """Every process a run starts, each in its own session; all are stopped at the end."""

    root: Path
    started: list[Process] = field(default_factory=list)

    def start(self, name: str, *args: str, ready: bool = True, timeout: float = 300) -> Process:
        popen = subprocess.Popen(
            [*MESHWARDEN, *args],
            stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        process = Process(name, popen, self.root / f"{name}.log")
        Thread(target=process._keep_stderr, daemon=True).start()
        self.started.append(process)
        if ready:
            assert popen.stdout is not None
            line = popen.stdout.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"{name} did not start: {line!r}\n{process.tail()}")
            process.ready = line.strip()
            Thread(target=popen.stdout.read, daemon=True).start()  # never blocks its writes
        return process

    def stop(self, process: Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGTERM)
        try:
            process.popen.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait(10)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.popen.poll() is None:
                self.stop(process)
        self.started.clear()


@dataclass
class ControlPlane:
    """One server process: its node API and ADS addresses and its /healthz URL."""

    process: Process
    address: str  # the node API (agents)
    ads: str  # the sidecars' listener
    health_url: str

    @classmethod
    def of(cls, process: Process) -> ControlPlane:
        line = process.ready
        node_api, ads = (line.split(f"{name} on ")[1].split(",")[0] for name in ("API", "ADS"))
        return cls(process, node_api, ads, line.rsplit("health ", 1)[1])


def write_kek(root: Path) -> Path:
    kek = root / "kek"
    kek.write_text(base64.b64encode(os.urandom(32)).decode())
    kek.chmod(0o600)
    return kek


def start_replicas(
    procs: Processes, cluster: EtcdCluster, kek: Path, count: int
) -> list[ControlPlane]:
    return [
        ControlPlane.of(
            procs.start(f"replica{n}", *server_args(cluster.url, kek, procs.root / f"replica{n}"))
        )
        for n in range(count)
    ]


def start_store(
    procs: Processes, mesh: FleetMesh, replicas: int
) -> tuple[EtcdCluster, list[ControlPlane]]:
    """A three-member etcd given the mesh (revision 1), then `replicas` servers on it."""
    cluster = start_cluster(3)
    try:
        policies = procs.root / "store-policies"
        mesh.write(policies, 0)
        run("apply", str(policies), "--store", cluster.url, "-m", "bench mesh")
        return cluster, start_replicas(procs, cluster, write_kek(procs.root), replicas)
    except BaseException:
        cluster.stop()
        raise


# ------------------------------------------------------------------ sidecars


def sidecar_states(urls: list[str]) -> dict[str, dict[str, Any]]:
    """Per workload, the report of the control plane it has an ADS stream to (with `at`: the
    index of that control plane in `urls`)."""
    out: dict[str, dict[str, Any]] = {}
    for index, url in enumerate(urls):
        with contextlib.suppress(OSError):
            for ref, state in health(url).get("sidecars", {}).items():
                if state.get("streams"):
                    out[ref] = {**state, "at": index}
    return out


def start_fleet(
    procs: Processes, mesh: FleetMesh, planes: list[ControlPlane], store: str | None
) -> dict[str, int]:
    """The agent (SDS) and one sidecar per workload, each listing every control plane (its
    bootstrap orders them per workload); returns {workload: outbound local port} once every
    sidecar is SYNCED."""
    run_dir = procs.root / "run"
    run_dir.mkdir(mode=0o755)
    for folder in (procs.root, *procs.root.parents):  # the sidecars' users reach the SDS socket
        if folder.stat().st_mode & 0o001 == 0:
            raise RuntimeError(f"{folder}: other users cannot enter it (chmod o+x)")
        if folder == Path(tempfile.gettempdir()):
            break
    source = ["--store", store] if store else ["--data-dir", str(procs.root / "dir-server")]
    token = run("token", "create", *source, "--node", "bench-host").strip()
    bundle = procs.root / "bundle.pem"
    run("ca", "bundle", *source, "--output-file", str(bundle))
    token_file = procs.root / "join-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    addresses = [p.address for p in planes]
    sds = run_dir / "sds.sock"
    procs.start(
        "agent",
        "agent",
        "--server",
        ",".join(addresses),
        "--join-token-file",
        str(token_file),
        "--server-bundle",
        str(bundle),
        "--data-dir",
        str(procs.root / "agent"),
        "--socket",
        str(run_dir / "agent.sock"),
        "--sds-socket",
        str(sds),
    )
    wait(sds.exists, 60, "the agent's SDS socket", pause=0.1)
    refs = mesh.workloads()
    for i, (ref, uid) in enumerate(zip(refs, mesh.uids, strict=True)):
        procs.start(
            f"sidecar{i}",
            "sidecar",
            "--workload",
            ref,
            "--user",
            str(uid),
            "--server",
            ",".join(p.ads for p in planes),
            "--trust-domain",
            TRUST_DOMAIN,
            "--sds-socket",
            str(sds),
            ready=False,
        )
    urls = [p.health_url for p in planes]
    wait(
        lambda: (
            all(s.get("state") == "SYNCED" for s in sidecar_states(urls).values())
            and len(sidecar_states(urls)) == len(refs)
        ),
        300,
        f"{len(refs)} sidecars SYNCED",
        pause=0.5,
    )
    return dict(zip(refs, mesh.shape.local_ports, strict=True))
