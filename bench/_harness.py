"""What the data-plane benchmarks share (bench_dataplane, bench_ext_authz, bench_tracing): the
mesh under test, static identities, Envoy processes pinned to CPUs, wrk runs and their figures.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import http.client
import json
import os
import platform
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import (
    CompiledMesh,
    InputLimits,
    Request,
    SpiffeId,
    TrustDomain,
    compile_documents,
    decide,
    parse_text,
)
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    SystemClock,
    generate_key,
    private_key_pkcs8_pem,
)
from meshwarden.xds import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ResourceEncoder,
    StaticTls,
    TranslationContext,
    envoy_binary,
    workload_resources,
)
from meshwarden.xds._tracing import TRACER_RUNTIME

from meshwarden._sidecars import admin_request

TD = "bench.example.org"

NS = "bench"

SERVER, CLIENT = f"{NS}/server", f"{NS}/client"

CLIENT_ID = f"spiffe://{TD}/ns/{NS}/sa/client"

SERVER_ID = f"spiffe://{TD}/ns/{NS}/sa/server"

INTRUDER_ID = f"spiffe://{TD}/ns/{NS}/sa/intruder"  # named by no rule: must get 403

BACKEND_BODY = b"meshwarden-bench-backend"

PORT = 8080

_T = "type.googleapis.com/"

INSTALL_HINT = "apt-get install -y wrk nghttp2-client"

# generated input, not a policy author's file: the per-file input limits do not apply
BENCH_LIMITS = InputLimits(documents=1_000_000, nodes=100_000_000, file_bytes=1 << 40)


def mesh_documents(n_rules: int, server_address: str, backend_port: int) -> list[dict[str, Any]]:
    """Mesh, server + client workloads, a Service, and `n_rules` one-rule ALLOW policies whose
    last (in name order) names the benchmark client."""
    docs: list[dict[str, Any]] = [
        {
            "kind": "Mesh",
            "metadata": {"name": "bench"},
            "spec": {"trustDomain": TD, "mtls": "STRICT", "defaultPolicy": "deny"},
        },
        {
            "kind": "Workload",
            "metadata": {"name": "server", "namespace": NS, "labels": {"app": "server"}},
            "spec": {
                "serviceAccount": "server",
                "addresses": [server_address],
                "ports": [{"port": PORT, "targetPort": backend_port, "protocol": "http"}],
            },
        },
        {
            "kind": "Service",
            "metadata": {"name": "server", "namespace": NS},
            "spec": {
                "selector": {"matchLabels": {"app": "server"}},
                "ports": [{"port": PORT, "protocol": "http"}],
            },
        },
        {
            "kind": "Workload",
            "metadata": {"name": "client", "namespace": NS, "labels": {"app": "client"}},
            "spec": {
                "serviceAccount": "client",
                "upstreams": [{"service": SERVER, "port": PORT, "localPort": 15001}],
            },
        },
    ]
    for i in range(n_rules):
        identity = CLIENT_ID if i == n_rules - 1 else f"spiffe://{TD}/ns/callers/sa/caller-{i:05d}"
        docs.append(
            {
                "kind": "AuthorizationPolicy",
                "metadata": {"name": f"allow-{i:05d}", "namespace": NS},
                "spec": {
                    "selector": {"matchLabels": {"app": "server"}},
                    "action": "ALLOW",
                    "rules": [
                        {"from": [{"identities": [identity]}], "to": [{"ports": [str(PORT)]}]}
                    ],
                },
            }
        )
    for doc in docs:
        doc["apiVersion"] = "meshwarden.io/v1alpha1"
    return docs


def load_mesh(docs: list[dict[str, Any]]) -> CompiledMesh:
    """YAML text → the real loader (`parse_text`) → `compile_documents`."""
    documents, problems = parse_text(
        yaml.safe_dump_all(docs, sort_keys=False), "bench.yaml", BENCH_LIMITS
    )
    if problems:
        raise SystemExit("bench policies do not load:\n" + "\n".join(map(str, problems)))
    return compile_documents(documents)


@dataclass
class Config:
    """One server sidecar under test."""

    label: str  # "ours" | "linear"
    rules: int
    address: str
    listener: dict[str, Any]
    local_cluster: dict[str, Any]
    local_port: int = 0
    admin: Path | None = None  # its admin socket, once started
    figures: dict[str, Any] = field(default_factory=dict)
    extra_clusters: list[dict[str, Any]] = field(default_factory=list)  # e.g. a trace collector

    @property
    def name(self) -> str:
        return f"{self.label}-{self.rules}"


Prepared = tuple["Config", list[dict[str, Any]], CompiledMesh, dict[str, float]]


def our_config(n: int, address: str, backend_port: int, tls: StaticTls) -> Prepared:
    docs = mesh_documents(n, address, backend_port)
    t0 = time.perf_counter()
    compiled = load_mesh(docs)
    t1 = time.perf_counter()
    ctx = TranslationContext(static_tls=tls, inline_routes=True)
    resources = workload_resources(compiled, SERVER, ctx)
    t2 = time.perf_counter()
    encoded = ResourceEncoder().encode_all(resources)
    t3 = time.perf_counter()
    [listener] = [r for r in resources[LISTENER] if r["name"] == f"in:{PORT}"]
    [cluster] = resources[CLUSTER]
    proto = sum(len(r.body) for r in encoded if r.name == listener["name"])
    config = Config("ours", n, address, listener, cluster)
    config.figures.update(listener_json_bytes=len(json.dumps(listener)), listener_proto_bytes=proto)
    timing = {"load_compile_s": t1 - t0, "translate_s": t2 - t1, "encode_s": t3 - t2}
    return config, docs, compiled, timing


def client_resources(
    compiled: CompiledMesh, tls: StaticTls, configs: list[Config]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Our client sidecar's outbound listener + mTLS cluster, once per server under test
    (static: the EDS cluster becomes STATIC with the server's address)."""
    resources = workload_resources(compiled, CLIENT, TranslationContext(static_tls=tls))
    [listener0], [cluster0] = resources[LISTENER], resources[CLUSTER]
    [endpoints0] = resources[ENDPOINT]
    listeners, clusters = [], []
    for c in configs:
        cluster = copy.deepcopy(cluster0)
        del cluster["edsClusterConfig"]
        endpoints = copy.deepcopy(endpoints0)
        endpoints["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"][
            "address"
        ] = c.address
        cluster.update(
            name=f"out:{c.name}",
            type="STATIC",
            loadAssignment={**endpoints, "clusterName": f"out:{c.name}"},
        )
        listener = copy.deepcopy(listener0)
        listener["name"] = f"out:{c.name}"
        listener["address"]["socketAddress"]["portValue"] = c.local_port
        [tcp] = listener["filterChains"][0]["filters"]
        tcp["typedConfig"]["cluster"] = f"out:{c.name}"
        listeners.append(listener)
        clusters.append(cluster)
    return listeners, clusters


def backend_listener(port: int) -> dict[str, Any]:
    route = {
        "name": "backend",
        "virtualHosts": [
            {
                "name": "any",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "directResponse": {
                            "status": 200,
                            "body": {"inlineString": BACKEND_BODY.decode()},
                        },
                    }
                ],
            }
        ],
    }
    return {
        "name": "backend",
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
        "filterChains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typedConfig": {
                            "@type": _T + "envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "statPrefix": "backend",
                            "routeConfig": route,
                            "httpFilters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typedConfig": {
                                        "@type": _T
                                        + "envoy.extensions.filters.http.router.v3.Router"
                                    },
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_addresses(count: int) -> list[str]:
    """`count` loopback addresses in 127.0.213.0/24 whose port 8080 nobody holds."""
    found = []
    for last in range(1, 255):
        address = f"127.0.213.{last}"
        with socket.socket() as s:
            try:
                s.bind((address, PORT))
            except OSError:
                continue
        found.append(address)
        if len(found) == count:
            return found
    raise SystemExit("no free 127.0.213.x:8080 addresses")


_PR_SET_PDEATHSIG = 1


def child_setup(cpus: set[int] | None) -> Any:
    """Runs in the child before exec: die with this process (even on SIGKILL), pin to cpus."""
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        os.setpgid(0, 0)  # our own group: Ctrl-C reaches us, we stop the Envoys in order
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


class Processes:
    """Every child process this benchmark starts; all are stopped on exit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def envoy(self, name: str, config: dict[str, Any], cpus: set[int] | None) -> Path:
        """Start one Envoy; returns its admin socket (0600, in this run's 0700 folder)."""
        path = self.folder / f"{name}.json"
        admin_socket = self.folder / f"{name}.admin.sock"
        admin = {"address": {"pipe": {"path": str(admin_socket), "mode": 0o600}}}
        path.write_text(json.dumps({**config, "admin": admin}))
        log = (self.folder / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(path),
                "--concurrency",
                "1",
                "--use-dynamic-base-id",
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=log,
            preexec_fn=child_setup(cpus),
        )
        log.close()
        self.children.append((name, proc))
        return admin_socket

    def cpu_seconds(self, name: str) -> float:
        """CPU time of a child so far, summed over its threads (schedstat: ns resolution)."""
        pid = dict(self.children)[name].pid
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9

    def diagnose(self, names: Sequence[str]) -> str:
        """Liveness, log tail and connection/TLS counters of some Envoys, for an error."""
        out = []
        for name in names:
            proc = dict(self.children)[name]
            state = "running" if proc.poll() is None else f"exited {proc.returncode}"
            log = (self.folder / f"{name}.log").read_text(errors="replace")[-1500:]
            admin = self.folder / f"{name}.admin.sock"
            stats: dict[str, int] = {}
            with contextlib.suppress(OSError, ValueError):
                stats = {
                    k: v
                    for k, v in admin_stats(admin, "ssl|cx_connect_fail|rbac").items()
                    if v
                    and any(w in k for w in ("error", "fail", "denied", "handshake", "allowed"))
                }
            out.append(f"--- Envoy {name}: {state}; non-zero counters {stats}\n{log}")
        return "\n".join(out)

    def wait_ready(self, name: str, admin: Path, timeout: float = 120) -> Path:
        proc = dict(self.children)[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = (self.folder / f"{name}.log").read_text()[-3000:]
                raise SystemExit(f"Envoy {name} exited ({proc.returncode}):\n{log}")
            with contextlib.suppress(OSError):
                if admin_request(admin, "/ready")[0] == 200:
                    return admin
            time.sleep(0.1)
        raise SystemExit(f"Envoy {name} not ready after {timeout:.0f} s")

    def stop_all(self) -> None:
        for _, proc in self.children:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self.children:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def admin_stats(admin: Path, contains: str) -> dict[str, int]:
    _, body = admin_request(admin, f"/stats?filter={contains}&format=json")
    return {s["name"]: s.get("value", 0) for s in json.loads(body)["stats"] if "name" in s}


def envoy_allocated_mb(admin: Path) -> float:
    _, body = admin_request(admin, "/memory")
    return int(json.loads(body)["allocated"]) / 2**20


def write_svid(ca: CertificateAuthority, spiffe_id: str, folder: Path) -> tuple[str, str]:
    key = generate_key()
    svid = ca.sign_x509_svid(key.public_key(), SpiffeId.parse(spiffe_id))
    name = spiffe_id.rsplit("/", 1)[-1]
    chain, key_file = folder / f"{name}.pem", folder / f"{name}.key"
    chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain))
    key_file.write_bytes(private_key_pkcs8_pem(key))
    return str(chain), str(key_file)


@dataclass(frozen=True)
class Identities:
    server: StaticTls
    client: StaticTls
    intruder: tuple[str, str]


def mint_identities(folder: Path) -> Identities:
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    bundle = folder / "bundle.pem"
    bundle.write_bytes(ca.bundle().x509_pem())
    server = StaticTls(*write_svid(ca, SERVER_ID, folder), str(bundle), TD)
    client = StaticTls(*write_svid(ca, CLIENT_ID, folder), str(bundle), TD)
    return Identities(server, client, write_svid(ca, INTRUDER_ID, folder))


def mtls_status(address: str, cert: tuple[str, str]) -> int:
    """GET / straight to a server sidecar with a client certificate (no client sidecar)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.load_cert_chain(*cert)
    conn = http.client.HTTPSConnection(address, PORT, context=context, timeout=10)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    finally:
        conn.close()


def check_enforcement(config: Config, ids: Identities, compiled: CompiledMesh) -> None:
    """A config is measured only if it denies an identity no rule names (as an RBAC denial)
    and lets the benchmark client through to the backend."""
    denied_before = _rbac_denied(config.admin)
    status = mtls_status(config.address, ids.intruder)
    denied = _rbac_denied(config.admin) - denied_before
    if status != 403 or denied != 1:
        raise SystemExit(
            f"{config.name}: {INTRUDER_ID} got {status} (RBAC denials "
            f"+{denied}); expected 403 from RBAC: this Envoy does not enforce "
            "the policies"
        )
    status, body = http_get(f"http://127.0.0.1:{config.local_port}/")
    if status != 200 or body != BACKEND_BODY:
        raise SystemExit(f"{config.name}: the client via its sidecar got {status} {body[:80]!r}")
    decision = decide(compiled.plan(SERVER), Request.build(SERVER, PORT, identity=CLIENT_ID))
    last = f"{NS}/allow-{config.rules - 1:05d}"
    if not decision.allowed or decision.policy != last:
        raise SystemExit(
            f"engine: client allowed={decision.allowed} by {decision.policy}, "
            f"expected the last policy {last}"
        )
    config.figures["denied_intruder"] = True


def _rbac_denied(admin: Path | None) -> int:
    assert admin is not None, "the Envoy has not started"
    stats = admin_stats(admin, "rbac")
    return sum(v for k, v in stats.items() if k.endswith(".denied") and "shadow" not in k)


WRK_SCRIPT = """
done = function(summary, latency, requests)
  local f = assert(io.open("%s", "w"))
  local e = summary.errors
  f:write(string.format('{"requests": %%d, "duration_us": %%d, "errors": {"connect": %%d, ' ..
    '"read": %%d, "write": %%d, "status": %%d, "timeout": %%d}, "quantiles_us": [',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  for i = 0, QUANTILES - 1 do
    local sep = i > 0 and ", " or ""
    f:write(string.format("%%s%%d", sep, latency:percentile((i + 0.5) * 100 / QUANTILES)))
  end
  f:write("]}\\n")
  f:close()
end
""".replace("QUANTILES", "1000")


def _percentile(samples: list[tuple[int, float]], p: float) -> float:
    """In ms: the smallest latency with at least p % of the (weighted) requests at or below."""
    total, seen = sum(w for _, w in samples), 0.0
    for us, weight in sorted(samples):
        seen += weight
        if seen * 100 >= p * total - 1e-9:
            return us / 1000
    return float("nan")


@dataclass
class Run:
    """Merged wrk runs of one config. wrk's Lua API gives percentiles, not its histogram, so each
    run is kept as 1,000 evenly spaced quantiles (each standing for 1/1,000 of its requests) and
    the runs' quantiles are merged weighted by their request counts."""

    requests: int = 0
    seconds: float = 0.0
    samples: list[tuple[int, float]] = field(default_factory=list)  # (latency µs, weight)
    rounds: list[dict[str, float]] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # Envoy name → CPU seconds in runs

    def add(self, out: dict[str, Any], cpu_s: dict[str, float] | None = None) -> None:
        for name, seconds in (cpu_s or {}).items():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + seconds
        self.requests += out["requests"]
        self.seconds += out["duration_us"] / 1e6
        quantiles = out["quantiles_us"]
        samples = [(us, out["requests"] / len(quantiles)) for us in quantiles]
        self.samples += samples
        one = {
            "p50_ms": _percentile(samples, 50),
            "p99_ms": _percentile(samples, 99),
            "rps": out["requests"] / (out["duration_us"] / 1e6),
        }
        if cpu_s and "server" in cpu_s:
            one["server_cpu_us_per_req"] = cpu_s["server"] / out["requests"] * 1e6
        self.rounds.append(one)

    def percentile(self, p: float) -> float:
        return _percentile(self.samples, p)

    def summary(self) -> dict[str, float]:
        out = {
            "p50_ms": self.percentile(50),
            "p99_ms": self.percentile(99),
            "rps": self.requests / self.seconds if self.seconds else 0.0,
        }
        for name, seconds in self.cpu_s.items():
            out[f"{name}_cpu_us_per_req"] = seconds / self.requests * 1e6
        return out

    def spread(self, key: str) -> tuple[float, float]:
        values = [r[key] for r in self.rounds]
        return min(values), max(values)


def wrk(
    url: str, seconds: float, connections: int, folder: Path, cpus: set[int] | None
) -> dict[str, Any]:
    out = folder / "wrk.json"
    out.unlink(missing_ok=True)
    script = folder / "wrk.lua"
    script.write_text(WRK_SCRIPT % out)
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "2s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, preexec_fn=child_setup(cpus), timeout=seconds + 30
    )
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    result: dict[str, Any] = json.loads(out.read_text())
    errors = {k: v for k, v in result["errors"].items() if v}
    if errors or not result["requests"]:
        raise SystemExit(
            f"{url}: wrk saw errors {errors} in {result['requests']} "
            "requests (non-2xx answers or socket errors): not measuring a broken "
            "path"
        )
    return result


@dataclass(frozen=True)
class Layout:
    """Which CPUs each process may use (None: anywhere). 2 cores: the server sidecar under test
    gets one, everything that produces its load (wrk, client sidecar, backend) the other."""

    server: set[int] | None
    others: set[int] | None

    @classmethod
    def choose(cls, pin: bool) -> Layout:
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2:
            return cls(None, None)
        return cls({cpus[-1]}, set(cpus[:-1]))


def start(
    procs: Processes,
    configs: list[Config],
    client_compiled: CompiledMesh,
    ids: Identities,
    backend_port: int,
    layout: Layout,
) -> None:
    """Every Envoy at once, then wait until all are ready."""

    def static(listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> dict[str, Any]:
        # Without SO_REUSEPORT a second process binding one of our addresses fails instead of
        # silently taking a share of our connections (the loopback is shared with other runs).
        listeners = [{**listener, "enableReusePort": False} for listener in listeners]
        return {
            "staticResources": {"listeners": listeners, "clusters": clusters},
            "layeredRuntime": {"layers": [{"name": "static", "staticLayer": TRACER_RUNTIME}]},
        }

    pending = {
        "backend": procs.envoy(
            "backend", static([backend_listener(backend_port)], []), layout.others
        )
    }
    listeners, clusters = client_resources(client_compiled, ids.client, configs)
    pending["client"] = procs.envoy("client", static(listeners, clusters), layout.others)
    for c in configs:
        pending[c.name] = procs.envoy(
            c.name, static([c.listener], [c.local_cluster, *c.extra_clusters]), layout.server
        )
    admins = {name: procs.wait_ready(name, path) for name, path in pending.items()}
    for c in configs:
        c.admin = admins[c.name]
        c.figures["envoy_allocated_mb"] = envoy_allocated_mb(c.admin)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" if it has none)."""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def machine(layout: Layout) -> dict[str, Any]:
    model = cpu_model()
    envoy = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True)
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "envoy": envoy.stdout.strip().rsplit("version:", 1)[-1].strip(),
        "wrk": (wrk_v.stdout + wrk_v.stderr).split("[")[0].strip(),
        "pinning": (
            f"server sidecar on cpu {sorted(layout.server)}; wrk, client sidecar, "
            f"backend on cpu {sorted(layout.others or ())}"
        )
        if layout.server
        else "none",
        "load_avg_start": os.getloadavg()[0],
    }


def stop_on_sigterm(*_: Any) -> None:
    raise SystemExit("terminated")
