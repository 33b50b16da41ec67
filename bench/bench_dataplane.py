"""Data-plane benchmark: request latency (p50/p99) and throughput through a client sidecar →
server sidecar pair of real Envoys on loopback, with 10 / 1,000 / 10,000 identity rules in the
server's policies, our RBAC `matcher` compilation against an Istio-style linear `rules` one.

    .venv/bin/python bench/bench_dataplane.py          # issue's sizes, 20 s per config, ~3.5 min
    .venv/bin/python bench/bench_dataplane.py --quick  # 3 s per config
    .venv/bin/python bench/bench_dataplane.py --json   # one JSON object on stdout

Path of one request (HTTP/1.1 keep-alive, `wrk` with fixed connections):

    wrk → 127.0.0.1:localPort  client sidecar (our outbound listener: tcp_proxy → mTLS cluster)
        → 127.0.213.x:8080      server sidecar (our inbound listener: TLS + SPIFFE validator, HCM,
                               RBAC, router)   ← the only thing that differs between configs
        → 127.0.0.1:backend    backend Envoy answering with `direct_response`

Policies: N AuthorizationPolicy documents `bench/allow-00000` … selecting the server, each one
ALLOW rule naming one exact SPIFFE ID on port 8080; the benchmark client's identity is named by
the LAST one in name order, the worst case for a linear scan. "ours" is the server listener
from `workload_resources(..., TranslationContext(static_tls=..., inline_routes=True))`;
"linear" is the same listener with its RBAC filter replaced by what istiod generates for the
same documents: one `rules` policy per rule (`ns[bench]-policy[allow-00000]-rule[0]`, permission
destination_port, principal `authenticated.principal_name` exact), which Envoy scans in name order.

Every server Envoy is started at once (one address each), plus an A/A control (a second sidecar
with the smallest size's listener); measurement rounds are interleaved (forward, then reverse
order) so drift on this shared machine hits every config alike; the rounds' latency quantiles
are merged, and ratios are also taken round by round (paired). Before measuring, each config must
answer 403 to a client identity that no rule names (and count it as an RBAC denial) and 200 from
the backend to the benchmark client; a run with any non-2xx or socket error stops.
Prints figures only (target from issue #4: ours at 10,000 rules within 5 % of ours at 10).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
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
    Request,
    SpiffeId,
    TrustDomain,
    check_documents,
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


# --------------------------------------------------------------------------- policies


def mesh_documents(n_rules: int, server_address: str, backend_port: int) -> list[dict[str, Any]]:
    """Mesh, server + client workloads, a Service, and `n_rules` one-rule ALLOW policies whose
    last (in name order) names the benchmark client."""
    docs: list[dict[str, Any]] = [
        {"kind": "Mesh", "metadata": {"name": "bench"},
         "spec": {"trustDomain": TD, "mtls": "STRICT", "defaultPolicy": "deny"}},
        {"kind": "Workload", "metadata": {"name": "server", "namespace": NS,
                                          "labels": {"app": "server"}},
         "spec": {"serviceAccount": "server", "addresses": [server_address],
                  "ports": [{"port": PORT, "targetPort": backend_port, "protocol": "http"}]}},
        {"kind": "Service", "metadata": {"name": "server", "namespace": NS},
         "spec": {"selector": {"matchLabels": {"app": "server"}},
                  "ports": [{"port": PORT, "protocol": "http"}]}},
        {"kind": "Workload", "metadata": {"name": "client", "namespace": NS,
                                          "labels": {"app": "client"}},
         "spec": {"serviceAccount": "client",
                  "upstreams": [{"service": SERVER, "port": PORT, "localPort": 15001}]}},
    ]  # fmt: skip
    for i in range(n_rules):
        identity = CLIENT_ID if i == n_rules - 1 else f"spiffe://{TD}/ns/callers/sa/caller-{i:05d}"
        docs.append({"kind": "AuthorizationPolicy",
                     "metadata": {"name": f"allow-{i:05d}", "namespace": NS},
                     "spec": {"selector": {"matchLabels": {"app": "server"}}, "action": "ALLOW",
                              "rules": [{"from": [{"identities": [identity]}],
                                         "to": [{"ports": [str(PORT)]}]}]}})  # fmt: skip
    for doc in docs:
        doc["apiVersion"] = "meshwarden.io/v1alpha1"
    return docs


def load_mesh(docs: list[dict[str, Any]]) -> CompiledMesh:
    """YAML text → the real loader (`parse_text`) → `compile_documents`."""
    documents, problems = parse_text(yaml.safe_dump_all(docs, sort_keys=False), "bench.yaml")
    if problems:
        raise SystemExit("bench policies do not load:\n" + "\n".join(map(str, problems)))
    return compile_documents(documents)


def check_shape(docs: list[dict[str, Any]]) -> None:
    """`check_documents` (semantic errors and warnings) must find nothing. Its shadow analysis
    is quadratic in the rules that select one workload (minutes at 10,000), so this runs on the
    smallest size only; the larger sizes are supersets of the same shape."""
    documents, _ = parse_text(yaml.safe_dump_all(docs, sort_keys=False), "bench.yaml")
    compiled, found = check_documents(documents)
    if compiled is None or found:
        raise SystemExit("bench policies do not check:\n" + "\n".join(map(str, found)))


def istio_style_rbac(docs: list[dict[str, Any]], stat_prefix: str) -> dict[str, Any]:
    """The HTTP RBAC filter istiod generates for ALLOW policies: one classic `rules` policy per
    rule, `ns[NS]-policy[NAME]-rule[I]`, permissions and principals as and/or of the fields."""
    policies = {}
    for doc in docs:
        if doc["kind"] != "AuthorizationPolicy":
            continue
        spec, meta = doc["spec"], doc["metadata"]
        assert spec["action"] == "ALLOW", "the linear baseline only models ALLOW policies"
        for i, rule in enumerate(spec["rules"]):
            ports = [p for op in rule["to"] for p in op["ports"]]
            ids = [x for src in rule["from"] for x in src["identities"]]
            assert set(rule) == {"from", "to"} and all("*" not in x for x in ids)
            policies[f"ns[{meta['namespace']}]-policy[{meta['name']}]-rule[{i}]"] = {
                "permissions": [{"andRules": {"rules": [{"orRules": {"rules": [
                    {"destinationPort": int(p)} for p in ports]}}]}}],
                "principals": [{"andIds": {"ids": [{"orIds": {"ids": [
                    {"authenticated": {"principalName": {"exact": x}}} for x in ids]}}]}}],
            }  # fmt: skip
    return {"name": "envoy.filters.http.rbac", "typedConfig": {
        "@type": _T + "envoy.extensions.filters.http.rbac.v3.RBAC",
        "rulesStatPrefix": stat_prefix,
        "rules": {"action": "ALLOW", "policies": policies}}}  # fmt: skip


# --------------------------------------------------------------------------- configs


@dataclass
class Config:
    """One server sidecar under test."""

    label: str  # "ours" | "linear"
    rules: int
    address: str
    listener: dict[str, Any]
    local_cluster: dict[str, Any]
    local_port: int = 0
    admin: str = ""  # host:port of its admin endpoint, once started
    figures: dict[str, Any] = field(default_factory=dict)
    extra_clusters: list[dict[str, Any]] = field(default_factory=list)  # e.g. a trace collector

    @property
    def name(self) -> str:
        return f"{self.label}-{self.rules}"


def _http_filters(listener: dict[str, Any]) -> list[dict[str, Any]]:
    [chain] = listener["filterChains"]
    [hcm] = chain["filters"]
    filters: list[dict[str, Any]] = hcm["typedConfig"]["httpFilters"]
    return filters


def linear_listener(ours: dict[str, Any], docs: list[dict[str, Any]], address: str
                    ) -> dict[str, Any]:  # fmt: skip
    """Our listener with its one RBAC filter swapped for the Istio-style one: same TLS, HCM,
    router and stat prefix."""
    listener = copy.deepcopy(ours)
    listener["address"]["socketAddress"]["address"] = address
    filters = _http_filters(listener)
    rbac = [i for i, f in enumerate(filters) if f["name"] == "envoy.filters.http.rbac"]
    assert len(rbac) == 1, f"expected one RBAC filter in our listener, got {len(rbac)}"
    prefix = filters[rbac[0]]["typedConfig"]["rulesStatPrefix"]
    filters[rbac[0]] = istio_style_rbac(docs, prefix)
    policies = filters[rbac[0]]["typedConfig"]["rules"]["policies"]
    assert CLIENT_ID in json.dumps(policies[max(policies)]), "the client must match last"
    return listener


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


def client_resources(compiled: CompiledMesh, tls: StaticTls, configs: list[Config]
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
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
            "address"] = c.address  # fmt: skip
        cluster.update(name=f"out:{c.name}", type="STATIC",
                       loadAssignment={**endpoints, "clusterName": f"out:{c.name}"})  # fmt: skip
        listener = copy.deepcopy(listener0)
        listener["name"] = f"out:{c.name}"
        listener["address"]["socketAddress"]["portValue"] = c.local_port
        [tcp] = listener["filterChains"][0]["filters"]
        tcp["typedConfig"]["cluster"] = f"out:{c.name}"
        listeners.append(listener)
        clusters.append(cluster)
    return listeners, clusters


def backend_listener(port: int) -> dict[str, Any]:
    route = {"name": "backend", "virtualHosts": [{"name": "any", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "directResponse": {
            "status": 200, "body": {"inlineString": BACKEND_BODY.decode()}}}]}]}  # fmt: skip
    return {
        "name": "backend",
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": port}},
        "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
            "typedConfig": {"@type": _T + "envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "statPrefix": "backend", "routeConfig": route,
                            "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {
                                "@type": _T + "envoy.extensions.filters.http.router.v3.Router"
                            }}]}}]}],
    }  # fmt: skip


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
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


def _child_setup(cpus: set[int] | None) -> Any:
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
        path = self.folder / f"{name}.json"
        path.write_text(json.dumps(config))
        admin_file = self.folder / f"{name}.admin"
        log = (self.folder / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [envoy_binary(), "-c", str(path), "--concurrency", "1", "--use-dynamic-base-id",
             "--log-level", "warning", "--admin-address-path", str(admin_file)],
            stdout=log, stderr=log, preexec_fn=_child_setup(cpus))  # fmt: skip
        log.close()
        self.children.append((name, proc))
        return admin_file

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
            admin_file = self.folder / f"{name}.admin"
            stats: dict[str, int] = {}
            with contextlib.suppress(OSError, ValueError):
                admin = admin_file.read_text().strip()
                stats = {k: v for k, v in admin_stats(admin, "ssl|cx_connect_fail|rbac").items()
                         if v and any(w in k for w in ("error", "fail", "denied", "handshake",
                                                       "allowed"))}  # fmt: skip
            out.append(f"--- Envoy {name}: {state}; non-zero counters {stats}\n{log}")
        return "\n".join(out)

    def wait_ready(self, name: str, admin_file: Path, timeout: float = 120) -> str:
        proc = dict(self.children)[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = (self.folder / f"{name}.log").read_text()[-3000:]
                raise SystemExit(f"Envoy {name} exited ({proc.returncode}):\n{log}")
            admin = admin_file.read_text().strip() if admin_file.exists() else ""
            with contextlib.suppress(OSError):
                if admin and http_get(f"http://{admin}/ready")[0] == 200:
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


def admin_stats(admin: str, contains: str) -> dict[str, int]:
    _, body = http_get(f"http://{admin}/stats?filter={contains}&format=json")
    return {s["name"]: s.get("value", 0) for s in json.loads(body)["stats"] if "name" in s}


def envoy_allocated_mb(admin: str) -> float:
    _, body = http_get(f"http://{admin}/memory")
    return int(json.loads(body)["allocated"]) / 2**20


# --------------------------------------------------------------------------- identities


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


# --------------------------------------------------------------------------- enforcement


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
        raise SystemExit(f"{config.name}: {INTRUDER_ID} got {status} (RBAC denials "
                         f"+{denied}); expected 403 from RBAC: this Envoy does not enforce "
                         "the policies")  # fmt: skip
    status, body = http_get(f"http://127.0.0.1:{config.local_port}/")
    if status != 200 or body != BACKEND_BODY:
        raise SystemExit(f"{config.name}: the client via its sidecar got {status} {body[:80]!r}")
    decision = decide(compiled.plan(SERVER), Request.build(SERVER, PORT, identity=CLIENT_ID))
    last = f"{NS}/allow-{config.rules - 1:05d}"
    if not decision.allowed or decision.policy != last:
        raise SystemExit(f"engine: client allowed={decision.allowed} by {decision.policy}, "
                         f"expected the last policy {last}")  # fmt: skip
    config.figures["denied_intruder"] = True


def _rbac_denied(admin: str) -> int:
    stats = admin_stats(admin, "rbac")
    return sum(v for k, v in stats.items() if k.endswith(".denied") and "shadow" not in k)


# --------------------------------------------------------------------------- load


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
        one = {"p50_ms": _percentile(samples, 50), "p99_ms": _percentile(samples, 99),
               "rps": out["requests"] / (out["duration_us"] / 1e6)}  # fmt: skip
        if cpu_s and "server" in cpu_s:
            one["server_cpu_us_per_req"] = cpu_s["server"] / out["requests"] * 1e6
        self.rounds.append(one)

    def percentile(self, p: float) -> float:
        return _percentile(self.samples, p)

    def summary(self) -> dict[str, float]:
        out = {"p50_ms": self.percentile(50), "p99_ms": self.percentile(99),
               "rps": self.requests / self.seconds if self.seconds else 0.0}  # fmt: skip
        for name, seconds in self.cpu_s.items():
            out[f"{name}_cpu_us_per_req"] = seconds / self.requests * 1e6
        return out

    def spread(self, key: str) -> tuple[float, float]:
        values = [r[key] for r in self.rounds]
        return min(values), max(values)


def wrk(url: str, seconds: float, connections: int, folder: Path, cpus: set[int] | None
        ) -> dict[str, Any]:  # fmt: skip
    out = folder / "wrk.json"
    out.unlink(missing_ok=True)
    script = folder / "wrk.lua"
    script.write_text(WRK_SCRIPT % out)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "2s",
           "-s", str(script), url]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_child_setup(cpus),
                          timeout=seconds + 30)  # fmt: skip
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    result: dict[str, Any] = json.loads(out.read_text())
    errors = {k: v for k, v in result["errors"].items() if v}
    if errors or not result["requests"]:
        raise SystemExit(f"{url}: wrk saw errors {errors} in {result['requests']} "
                         "requests (non-2xx answers or socket errors): not measuring a broken "
                         "path")  # fmt: skip
    return result


# --------------------------------------------------------------------------- run


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


def prepare(sizes: Sequence[int], backend_port: int, ids: Identities
            ) -> tuple[list[Config], dict[int, CompiledMesh]]:  # fmt: skip
    """(ours, linear) per size, then the A/A control (a second sidecar with exactly the
    smallest size's listener), and the compiled mesh of each size."""
    addresses = server_addresses(2 * len(sizes) + 1)
    configs, meshes = [], {}
    our_config(1, addresses[0], backend_port, ids.server)  # imports envoy-data-plane: not timed
    for k, n in enumerate(sizes):
        progress(f"compiling {n:,} rules ...")
        ours, docs, compiled, timing = our_config(n, addresses[2 * k], backend_port, ids.server)
        meshes[n] = compiled
        if k == 0:
            check_shape(docs)
        linear = Config("linear", n, addresses[2 * k + 1],
                        linear_listener(ours.listener, docs, addresses[2 * k + 1]),
                        ours.local_cluster)  # fmt: skip
        linear.figures["listener_json_bytes"] = len(json.dumps(linear.listener))
        ours.figures.update(timing)
        configs += [ours, linear]
    small = configs[0]
    control = copy.deepcopy(small.listener)
    control["address"]["socketAddress"]["address"] = addresses[-1]
    configs.append(Config("control", small.rules, addresses[-1], control, small.local_cluster,
                          figures={"listener_json_bytes": len(json.dumps(control))}))  # fmt: skip
    for c in configs:
        c.local_port = _free_port()
    return configs, meshes


def start(procs: Processes, configs: list[Config], client_compiled: CompiledMesh,
          ids: Identities, backend_port: int, layout: Layout) -> None:  # fmt: skip
    """Every Envoy at once, then wait until all are ready."""

    def static(listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]
               ) -> dict[str, Any]:  # fmt: skip
        # Without SO_REUSEPORT a second process binding one of our addresses fails instead of
        # silently taking a share of our connections (the loopback is shared with other runs).
        listeners = [{**listener, "enableReusePort": False} for listener in listeners]
        return {"admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}},
                "staticResources": {"listeners": listeners, "clusters": clusters},
                "layeredRuntime": {"layers": [{"name": "static",
                                               "staticLayer": TRACER_RUNTIME}]}}  # fmt: skip

    pending = {"backend": procs.envoy("backend", static([backend_listener(backend_port)], []),
                                      layout.others)}  # fmt: skip
    listeners, clusters = client_resources(client_compiled, ids.client, configs)
    pending["client"] = procs.envoy("client", static(listeners, clusters), layout.others)
    for c in configs:
        pending[c.name] = procs.envoy(c.name, static([c.listener], [c.local_cluster,
                                                                    *c.extra_clusters]),
                                      layout.server)  # fmt: skip
    admins = {name: procs.wait_ready(name, path) for name, path in pending.items()}
    for c in configs:
        c.admin = admins[c.name]
        c.figures["envoy_allocated_mb"] = envoy_allocated_mb(c.admin)


def measure(configs: list[Config], args: argparse.Namespace, folder: Path, layout: Layout,
            procs: Processes) -> dict[str, Run]:  # fmt: skip
    runs = {c.name: Run() for c in configs}
    url = {c.name: f"http://127.0.0.1:{c.local_port}/" for c in configs}
    for c in configs:
        progress(f"warm-up {c.name} ({args.warmup:g} s)")
        wrk(url[c.name], args.warmup, args.connections, folder, layout.others)
    slice_s = args.seconds / args.rounds  # whole seconds (wrk -d), see parse_args
    order = sorted(configs, key=lambda c: ("ours", "control", "linear").index(c.label))
    for r in range(args.rounds):
        for c in order if r % 2 == 0 else order[::-1]:
            progress(f"round {r + 1}/{args.rounds}: {c.name} ({slice_s:g} s)")
            envoys = {"server": c.name, "client": "client"}
            before = {k: procs.cpu_seconds(v) for k, v in envoys.items()}
            try:
                out = wrk(url[c.name], slice_s, args.connections, folder, layout.others)
            except SystemExit as failed:
                raise SystemExit(f"{failed}\n{procs.diagnose([c.name, 'client'])}") from None
            runs[c.name].add(out, {k: procs.cpu_seconds(v) - before[k] for k, v in envoys.items()})
    return runs


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def machine(layout: Layout) -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    envoy = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True)
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return {
        "cpu": model, "cores": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
        "platform": platform.platform(), "python": platform.python_version(),
        "envoy": envoy.stdout.strip().rsplit("version:", 1)[-1].strip(),
        "wrk": (wrk_v.stdout + wrk_v.stderr).split("[")[0].strip(),
        "pinning": (f"server sidecar on cpu {sorted(layout.server)}; wrk, client sidecar, "
                    f"backend on cpu {sorted(layout.others or ())}") if layout.server else "none",
        "load_avg_start": os.getloadavg()[0],
    }  # fmt: skip


def results(configs: list[Config], runs: dict[str, Run]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    pairs = [c for c in configs if c.label in ("ours", "linear")]
    for ours, linear in zip(pairs[::2], pairs[1::2], strict=True):
        o, lin = runs[ours.name].summary(), runs[linear.name].summary()
        rows.append({
            "rules": ours.rules,
            "ours": {**o, **ours.figures, **_extra(runs[ours.name])},
            "linear": {**lin, **linear.figures, **_extra(runs[linear.name])},
            "ours_over_linear": {k: o[k] / lin[k] for k in o},
        })  # fmt: skip
    control = runs[f"control-{rows[0]['rules']}"]
    rows[0]["control"] = {**control.summary(), **_extra(control)}
    base = rows[0]["ours"]
    for row in rows:
        row["ours_over_ours_smallest"] = {k: row["ours"][k] / base[k] for k in RATIO_KEYS}
    return rows


RATIO_KEYS = ("p50_ms", "p99_ms", "rps", "server_cpu_us_per_req")


def _extra(run: Run) -> dict[str, Any]:
    return {"requests": run.requests, "round_p50_ms": run.spread("p50_ms"),
            "round_rps": run.spread("rps")}  # fmt: skip


def verdicts(rows: list[dict[str, Any]], runs: dict[str, Run]) -> dict[str, dict[str, Any]]:
    """Issue #4: ours at the largest size within 5 % of ours at the smallest. Rounds of the two
    run seconds apart (interleaved), so the verdict takes the median of the paired rounds'
    ratios, which drift and neighbours on the shared machine affect least; the pooled ratio
    (all rounds merged) is reported beside it, and so is the same ratio between two identical
    sidecars (the A/A control: what "no difference" looks like on this machine)."""
    first, last = rows[0], rows[-1]
    small, large = runs[f"ours-{first['rules']}"], runs[f"ours-{last['rules']}"]
    control = runs[f"control-{first['rules']}"]
    out = {}
    checks = (("p50_ms", "p50", True), ("p99_ms", "p99", True), ("rps", "req/s", False),
              ("server_cpu_us_per_req", "server CPU/req", True))  # fmt: skip
    for key, what, higher_is_worse in checks:
        paired = _paired(small, large, key)
        median = statistics.median(paired)
        same = _paired(small, control, key)
        target = 1.05 if higher_is_worse else 0.95
        out[f"ours_{key}_ratio"] = {
            "label": f"ours {what} at {last['rules']:,} / at {first['rules']:,} rules",
            "value": median, "target": target,
            "pass": median <= target if higher_is_worse else median >= target,
            "pooled": last["ours"][key] / first["ours"][key],
            "paired_rounds": paired,
            "control": {"median": statistics.median(same), "min": same[0],
                        "max": same[-1]}}  # fmt: skip
    return out


def _paired(a: Run, b: Run, key: str) -> list[float]:
    return sorted(y[key] / x[key] for x, y in zip(a.rounds, b.rounds, strict=True))


def print_report(report: dict[str, Any]) -> None:
    m, a = report["machine"], report["settings"]
    print(f"machine : {m['cpu']}, {m['cores']} cores, {m['platform']}")
    print(f"software: Envoy {m['envoy']}; {m['wrk']}; Python {m['python']}")
    print(f"load    : wrk -t1 -c{a['connections']} HTTP/1.1 keep-alive, {a['seconds']:g} s per "
          f"config in {a['rounds']} interleaved rounds after {a['warmup']:g} s warm-up; every "
          f"Envoy --concurrency 1; pinning: {m['pinning']}")  # fmt: skip
    print(
        f"load avg: {m['load_avg_start']:.2f} at start, {m['load_avg_end']:.2f} at end "
        "(shared machine)"
    )
    b = report["backend_alone"]
    print(
        f"backend : Envoy direct_response, wrk straight to it: {b['rps']:,.0f} req/s, "
        f"p50 {b['p50_ms']:.3f} ms, p99 {b['p99_ms']:.3f} ms (not the bottleneck)"
    )
    print()
    print("   rules  config   p50 ms (rounds' p50)   p99 ms     req/s   CPU µs/req: server client")
    for r in report["results"]:
        for label in [k for k in ("ours", "control", "linear") if k in r]:
            x = r[label]
            lo, hi = x["round_p50_ms"]
            print(f"{r['rules']:>8,}  {label:<7} {x['p50_ms']:7.3f} ({lo:6.3f}-{hi:<6.3f}) "
                  f"{x['p99_ms']:8.3f} {x['rps']:9,.0f} {x['server_cpu_us_per_req']:13.1f} "
                  f"{x['client_cpu_us_per_req']:7.1f}")  # fmt: skip
    print()
    print(
        "   rules   ours / linear: p50   p99  req/s  server CPU"
        "    ours / ours(smallest): p50   p99  req/s  server CPU"
    )
    for r in report["results"]:
        q, s = r["ours_over_linear"], r["ours_over_ours_smallest"]
        print(f"{r['rules']:>8,}  {q['p50_ms']:20.2f} {q['p99_ms']:5.2f} {q['rps']:6.2f} "
              f"{q['server_cpu_us_per_req']:11.2f} {s['p50_ms']:28.3f} {s['p99_ms']:5.3f} "
              f"{s['rps']:6.3f} {s['server_cpu_us_per_req']:11.3f}")  # fmt: skip
    print()
    print(
        "           our translator          listener JSON given to Envoy     ours as"
        "     Envoy heap MB"
    )
    print(
        "   rules   compile s  translate s  encode s    ours        linear     protobuf"
        "    ours  linear"
    )
    for r in report["results"]:
        o, lin = r["ours"], r["linear"]
        print(
            f"{r['rules']:>8,}  {o['load_compile_s']:9.2f} {o['translate_s']:12.3f} "
            f"{o['encode_s']:9.2f} {_size(o['listener_json_bytes']):>9} "
            f"{_size(lin['listener_json_bytes']):>11} {_size(o['listener_proto_bytes']):>11} "
            f"{o['envoy_allocated_mb']:9.1f} {lin['envoy_allocated_mb']:6.1f}"
        )
    print(
        "(compile s = YAML → loader → compile_documents; translate s = workload_resources; "
        "encode s = ResourceEncoder on a cold cache)"
    )
    print()
    first = report["results"][0]["rules"]
    for t in report["targets"].values():
        sign = "≤" if t["target"] > 1 else "≥"
        r = t["paired_rounds"]
        print(f"target  : {t['label']} = {t['value']:.3f} ({sign} {t['target']}) "
              f"{'PASS' if t['pass'] else 'MISS'}  (median of {len(r)} paired rounds, range "
              f"{r[0]:.3f}-{r[-1]:.3f}; pooled {t['pooled']:.3f})")  # fmt: skip
        c = t["control"]
        print(f"          A/A control, two identical {first:,}-rule sidecars: median "
              f"{c['median']:.3f}, range {c['min']:.3f}-{c['max']:.3f}")  # fmt: skip


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 1024:.1f} kB"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 s per config, 1 s warm-up")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--sizes", default="10,1000,10000", help="rule counts (ascending)")
    p.add_argument("--seconds", type=float, help="measured seconds per config (default 20)")
    p.add_argument("--rounds", type=int, help="interleaved rounds the seconds are split into")
    p.add_argument("--warmup", type=float, help="warm-up seconds per config (default 2)")
    p.add_argument("--connections", type=int, default=4, help="wrk connections (1 thread)")
    p.add_argument("--no-pin", action="store_true", help="let the OS place every process")
    args = p.parse_args(argv)
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    args.seconds = args.seconds or (3.0 if args.quick else 20.0)
    args.rounds = args.rounds or (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    # wrk -d takes whole seconds: each round lasts round(seconds / rounds) ≥ 1 s
    args.seconds = float(max(1, round(args.seconds / args.rounds)) * args.rounds)
    args.warmup = float(max(1, round(args.warmup)))
    return args


def _stop_on_sigterm(*_: Any) -> None:
    raise SystemExit("terminated")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(f"bench_dataplane: needs the `wrk` load generator: {INSTALL_HINT}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started as `cmd &`
    layout = Layout.choose(pin=not args.no_pin)
    info = machine(layout)
    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as tmp:
        folder = Path(tmp)
        ids = mint_identities(folder)
        backend_port = _free_port()
        configs, meshes = prepare(args.sizes, backend_port, ids)
        procs = Processes(folder)
        try:
            progress(f"starting {len(configs) + 2} Envoys ...")
            start(procs, configs, meshes[args.sizes[0]], ids, backend_port, layout)
            for c in configs:
                check_enforcement(c, ids, meshes[c.rules])
            progress("403 for an unnamed identity and 200 for the client on every config")
            backend_alone = Run()
            backend_alone.add(wrk(f"http://127.0.0.1:{backend_port}/", min(3.0, args.seconds),
                                  args.connections, folder, layout.others))  # fmt: skip
            runs = measure(configs, args, folder, layout, procs)
        finally:
            procs.stop_all()
    info["load_avg_end"] = os.getloadavg()[0]
    rows = results(configs, runs)
    report = {"machine": info, "settings": {k: getattr(args, k) for k in (
        "sizes", "seconds", "rounds", "warmup", "connections")},
        "backend_alone": backend_alone.summary(), "results": rows,
        "targets": verdicts(rows, runs)}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every Envoy stopped", file=sys.stderr)
        sys.exit(130)
