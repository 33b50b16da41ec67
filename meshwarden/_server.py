"""`meshwarden server`: wires the policy registry, the CA, join tokens and the node API.

Data dir layout (the dir must be the running user's, mode 0700): ca.json (CA keys, 0600),
server.key/server.pem (the server's own SVID, 0600), nodes.json (the node SVIDs issued through
attestation, 0600), bundle.json (the SPIFFE bundle, public), admin.sock (0600; `meshwarden token
create`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from meshwarden._admin import AdminSocket
from meshwarden._authz_workers import AuthzWorkers, WorkerFiles
from meshwarden._console import Console, ConsoleOptions, ConsoleSources
from meshwarden._enforce import PacketFilters
from meshwarden._etcd import StoreUrl
from meshwarden._flow_file import FlowFile
from meshwarden._flows import DEFAULT_SIZE as DEFAULT_FLOW_LOG_SIZE
from meshwarden._flows import FlowLog
from meshwarden._health import HealthEndpoint, Reply, health_report
from meshwarden._policies import Policies, settle_collections
from meshwarden._policy_watch import written_or_timeout
from meshwarden._replica import Replica
from meshwarden._xds import MeshXds
from meshwarden.identities import (
    SERVER_DNS_NAME,
    CaConfig,
    CertificateAuthority,
    Clock,
    IssuedNodes,
    JoinTokens,
    MtlsEndpoint,
    NodeRecords,
    RotatingCredentials,
    ServerTls,
    StateError,
    TlsEndpoint,
    TokenRedeemer,
    UpstreamCa,
    check_private_dir,
    generate_key,
    load_ca,
    load_private_key_pem,
    node_api_services,
    private_key_pkcs8_pem,
    raise_descriptor_limit,
    save_ca,
    write_file,
)
from meshwarden.xds import TracingTarget, front_tls, serve_authz_http

BUNDLE_FILE = "bundle.json"
CA_FILE = "ca.json"
NODES_FILE = "nodes.json"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
TICK_SECONDS = 1.0  # CA rotation and certificate renewal
POLICY_POLL_SECONDS = 0.05  # how often the policy files are stat()ed for changes


@dataclass(frozen=True)
class ServerOptions:
    policies: Path | None  # the policy directory; None with `store`
    data_dir: Path
    listen: str = "127.0.0.1:8443"  # node API (agents: attestation, SVIDs), Python TLS
    xds_listen: str = "127.0.0.1:0"  # ADS, access logs, ext_authz for sidecars (grpc TLS)
    ext_authz_http_listen: str | None = None  # the ext_authz HTTP front (mTLS); None = off
    ext_authz_workers: int = 0  # processes serving that front; 0 = on this event loop
    upstream_cert: Path | None = None
    upstream_key: Path | None = None
    svid_ttl: dt.timedelta = dt.timedelta(hours=1)
    ca_ttl: dt.timedelta = dt.timedelta(hours=24)
    health: str | None = "127.0.0.1:0"
    flow_log_size: int = DEFAULT_FLOW_LOG_SIZE  # decisions kept for `meshwarden flows`
    flow_log_sample: float = 100.0  # % of allowed HTTP requests the sidecars log (denials: all)
    tracing: TracingTarget | None = None  # sidecars' OpenTelemetry tracer; None = off
    new_ca: bool = False  # mint a new CA even though the data dir says one existed
    flow_log_file: Path | None = None  # also append every record here (NDJSON, rotated)
    ui: ConsoleOptions | None = None  # the web console (--ui HOST:PORT); None = off
    store: StoreUrl | None = None  # policies (and, with kek_file, the CA) from etcd
    kek_file: Path | None = None  # key-encryption key of the CA material in the store
    replica_id: str | None = None  # names this control plane in status; default HOST:PORT


class ControlPlane:
    def __init__(self, options: ServerOptions, clock: Clock) -> None:
        self.options = options
        self.clock = clock
        self.replica: Replica | None = None
        self.tokens = JoinTokens(clock)
        if options.store is not None and options.kek_file is not None:
            self.replica = Replica(options.store, options.kek_file, clock)
            self.policies = Policies(Path(str(options.store)), source=self.replica.source)
        else:
            assert options.policies is not None
            self.policies = Policies(options.policies)
        on_disk = FlowFile(options.flow_log_file) if options.flow_log_file else None
        self.xds = MeshXds(
            self.policies,
            options.tracing,
            flows=FlowLog(options.flow_log_size, mirror=on_disk),
            flow_log_sample=options.flow_log_sample,
            ext_authz_http=options.ext_authz_http_listen is not None,
        )
        self.health: HealthEndpoint | None = None
        self.console: Console | None = None
        self.ca: CertificateAuthority | None = None
        self.endpoint: TlsEndpoint | None = None  # the node API
        self.xds_endpoint: MtlsEndpoint | None = None  # what sidecars connect to
        self.authz_http: asyncio.Server | None = None  # the ext_authz HTTP front, when on
        self.authz_workers: AuthzWorkers | None = None  # ... when it runs in worker processes
        self._authz_tls: ServerTls | None = None
        self._admin: AdminSocket | None = None
        self._server_cert_renew_at = clock.now()
        self._background: set[asyncio.Task[None]] = set()
        metrics.get_meter("meshwarden.server").create_observable_gauge(
            "meshwarden.ca.expiry",
            callbacks=[self._ca_expiry],
            unit="s",
            description="seconds until each published X.509 CA certificate expires",
        )

    def _ca_expiry(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.ca is None:
            return []
        now = self.clock.now()
        return [
            Observation(
                (cert.not_valid_after_utc - now).total_seconds(),
                {
                    "trust_domain": str(self.ca.trust_domain),
                    "serial": format(cert.serial_number, "x"),
                },
            )
            for cert in self.ca.bundle().x509_authorities
        ]

    @property
    def data_dir(self) -> Path:
        return self.options.data_dir

    def _ca_config(self) -> CaConfig:
        self.policies.reload_when_settled()
        if self.policies.registry is None and self.replica is not None:
            raise ValueError(
                f"{self.options.store}: no valid policy revision in the store; "
                "meshwarden apply DIR --store URL writes one"
            )
        if self.policies.registry is None:
            raise ValueError(f"{self.options.policies}: no valid policies; fix the errors above")
        upstream = None
        if self.options.upstream_cert and self.options.upstream_key:
            upstream = UpstreamCa.load(self.options.upstream_cert, self.options.upstream_key)
        return CaConfig(
            self.policies.registry.trust_domain,
            ca_ttl=self.options.ca_ttl,
            svid_ttl=self.options.svid_ttl,
            upstream=upstream,
        )

    async def _open_ca(self) -> CertificateAuthority:
        config = self._ca_config()
        if self.replica is not None:
            return await self.replica.open_ca(config)
        evidence = [self.data_dir / name for name in (BUNDLE_FILE, NODES_FILE, SERVER_CERT)]
        ca_file = self.data_dir / CA_FILE
        if self.options.new_ca and ca_file.exists():
            ca_file.replace(ca_file.with_name(CA_FILE + ".replaced"))
        return load_ca(ca_file, config, self.clock, evidence, self.options.new_ca)

    def _server_key(self) -> EllipticCurvePrivateKey:
        key_file = self.data_dir / SERVER_KEY
        if not key_file.exists():
            key = generate_key()
            write_file(key_file, private_key_pkcs8_pem(key))
            return key
        try:
            return load_private_key_pem(key_file.read_bytes(), str(key_file))
        except (OSError, ValueError) as exc:
            raise StateError(f"{exc}; remove {key_file} to get a new server key") from None

    def _issue_server_svid(self) -> None:
        assert self.ca is not None
        svid = self.ca.sign_server_svid(self._server_key().public_key(), [SERVER_DNS_NAME])
        write_file(
            self.data_dir / SERVER_CERT, b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain)
        )
        leaf = svid.leaf
        self._server_cert_renew_at = (
            leaf.not_valid_before_utc + (leaf.not_valid_after_utc - leaf.not_valid_before_utc) / 2
        )

    def _publish(self) -> None:
        assert self.ca is not None
        if self.replica is None:  # replicas keep the CA (encrypted) in the store only
            save_ca(self.ca, self.data_dir / CA_FILE)
        write_file(self.data_dir / BUNDLE_FILE, self.ca.bundle().to_spiffe_json().encode(), 0o644)

    async def start(self) -> str:
        check_private_dir(self.data_dir)
        raise_descriptor_limit()  # a descriptor per sidecar stream: 1,024 is a small mesh
        nodes: NodeRecords = IssuedNodes.load(self.data_dir / NODES_FILE, self.clock)
        tokens: TokenRedeemer = self.tokens
        if self.replica is not None:
            await self.replica.source.catch_up()
            nodes, tokens = self.replica.nodes, self.replica.tokens
        self.ca = await self._open_ca()
        self._publish()
        self._issue_server_svid()
        tls = ServerTls(
            self.data_dir / SERVER_CERT, self.data_dir / SERVER_KEY, self.ca.bundle().x509_pem()
        )
        host, _, port = self.options.listen.rpartition(":")
        filters = PacketFilters(lambda: self.policies.mesh)  # for `agent --enforce`
        node_api = node_api_services(
            self.ca,
            tokens,
            lambda: self.policies.registry,
            nodes,
            filters,
            self.options.svid_ttl,
        )
        self.xds.jwt_bundle = self._jwt_bundle
        self.xds.issued_until = self._issued_until
        self.xds.publish(frozenset(self.policies.mesh.plans) if self.policies.mesh else None)
        settle_collections()

        self.endpoint = TlsEndpoint(host or "127.0.0.1", int(port), tls, node_api)
        await self.endpoint.start()
        xds_host, _, xds_port = self.options.xds_listen.rpartition(":")
        credentials = RotatingCredentials(
            (self.data_dir / SERVER_KEY).read_bytes(),
            (self.data_dir / SERVER_CERT).read_bytes(),
            self.ca.bundle().x509_pem(),
        )
        self.xds_endpoint = MtlsEndpoint(
            xds_host.strip("[]") or "127.0.0.1", int(xds_port), credentials, self.xds.add_to
        )
        await self.xds_endpoint.start()
        await self._start_authz_http()
        self.xds.replica = self.options.replica_id or replica_name(
            self.endpoint.host, self.endpoint.port
        )
        self._admin = AdminSocket(self.data_dir, self._admin_request)
        await self._admin.start()
        if self.options.health:
            health_host, _, health_port = self.options.health.rpartition(":")
            self.health = HealthEndpoint(health_host, int(health_port), self._health)
            self.health.routes["/healthz"] = self._healthz
            self.health.routes["/flows"] = self.xds.flows.route
            await self.health.start()
        if self.options.ui is not None:
            sources = ConsoleSources(self.policies, self.xds.flows, self.status_report)
            sources.store = self.replica.source.store if self.replica is not None else None
            self.console = Console(self.options.ui, sources)
            await self.console.start()
        return f"{self.endpoint.host}:{self.endpoint.port}"

    async def _start_authz_http(self) -> None:
        """The ext_authz HTTP front (`extAuthz.transport: http`): the server certificate,
        client certificates of the trust bundle required (followed through rotations)."""
        if self.options.ext_authz_http_listen is None:
            return
        assert self.ca is not None
        host, _, port = self.options.ext_authz_http_listen.rpartition(":")
        if self.options.ext_authz_workers > 0:
            await self._start_authz_workers(host.strip("[]") or "127.0.0.1", int(port))
            return
        self._authz_tls = front_tls(
            self.data_dir / SERVER_CERT, self.data_dir / SERVER_KEY, self.ca.bundle().x509_pem()
        )
        self.authz_http = await serve_authz_http(
            self.xds.ext_authz_front(),
            host.strip("[]") or "127.0.0.1",
            int(port),
            self._authz_tls.listening,
        )

    async def _start_authz_workers(self, host: str, port: int) -> None:
        """The front in `ext_authz_workers` processes sharing the address (`AuthzWorkers`),
        fed the same policies and TLS changes as the rest of the control plane."""
        assert self.ca is not None
        tracing = self.options.tracing
        endpoint = None
        if tracing is not None:
            endpoint = f"{'https' if tracing.tls else 'http'}://{tracing.host}:{tracing.port}"
        self.authz_workers = AuthzWorkers(
            self.options.ext_authz_workers,
            (host, port),
            WorkerFiles(self.data_dir / SERVER_CERT, self.data_dir / SERVER_KEY),
            str(self.policies.directory),
            self.xds.authorization.record,
            endpoint,
        )
        mesh = self.policies.mesh
        await self.authz_workers.start(
            self.ca.bundle().x509_pem(), self.policies.contents, mesh.version if mesh else ""
        )

    def _publish_to_workers(self) -> None:
        if self.authz_workers is not None and self.policies.mesh is not None:
            self.authz_workers.publish(self.policies.contents, self.policies.mesh.version)

    @property
    def ext_authz_http_port(self) -> int | None:
        """The ext_authz HTTP front's port once started (None when off)."""
        if self.authz_workers is not None:
            return self.authz_workers.port
        if self.authz_http is None:
            return None
        return int(self.authz_http.sockets[0].getsockname()[1])

    @property
    def xds_address(self) -> str:
        """HOST:PORT of the sidecars' listener (ADS, access logs, ext_authz) once started."""
        assert self.xds_endpoint is not None
        host, port = self.xds_endpoint.host, self.xds_endpoint.port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def status_report(self) -> dict[str, Any]:
        """What GET /healthz answers now (with what `up` adds to it), also without one."""
        if self.health is None:
            return self._health()
        return dict(json.loads(self.health.routes["/healthz"]({}).body))

    def _jwt_bundle(self, trust_domain: str) -> str | None:
        if self.ca is None or str(self.ca.trust_domain) != trust_domain:
            return None
        return self.ca.bundle().standard_jwks_json().decode()

    def _issued_until(self, spiffe_id: str) -> dt.datetime | None:
        return None if self.ca is None else self.ca.issued_until.get(spiffe_id)

    def _healthz(self, params: dict[str, str]) -> Reply:
        """GET /healthz; `?sidecars=none` leaves out the per-sidecar view (for probes: with
        1,000 sidecars the full report is ≈ 1 MB and tens of milliseconds of the event loop)."""
        sidecars = params.get("sidecars", "all")
        if sidecars not in ("all", "none"):
            error = f"sidecars={sidecars}: expected sidecars=all (the default) or sidecars=none"
            return Reply.json({"error": error}, "400 Bad Request")
        return Reply.json(self._health(sidecars == "all"))

    def _health(self, with_sidecars: bool = True) -> dict[str, Any]:
        report = health_report(
            self.policies,
            self.xds.nacks(),
            self.xds.sidecars() if with_sidecars else None,
            sorted(self.xds.build_errors.values()),
            self.xds.sidecar_problems(),
        )
        report["replica"] = self.xds.replica
        if self.health is not None:  # its connections: a flood shows as evictions
            report["healthEndpoint"] = self.health.counters()
        if self.authz_workers is not None:
            report["extAuthz"] = {
                "workers": self.authz_workers.status(),
                "current": self.authz_workers.current,
                "restarts": self.authz_workers.restarts,
            }
        if self.replica is None:
            assert self.options.policies is not None
            report["policies"] = str(self.options.policies.resolve())  # for `meshwarden verify`
            return report
        report["store"] = self.replica.health()
        if self.replica.source.error is not None or self.replica.ca_error is not None:
            report["status"] = "degraded"
        return report

    async def _admin_request(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("op") != "token.create":
            raise ValueError(f"unknown admin operation {request.get('op')!r}")
        ttl = dt.timedelta(seconds=float(request["ttl_seconds"]))
        if self.replica is not None:  # redeemable on every replica
            return {"token": await self.replica.tokens.create(str(request["node"]), ttl)}
        return {"token": self.tokens.create(str(request["node"]), ttl)}

    async def run(self) -> None:
        """Rotate the CA, renew the server certificate and reload policies (pushing what
        changed to the sidecars), forever."""
        source = self.replica.source if self.replica else None
        followers = [source.follow(), source.probe()] if source else []
        await asyncio.gather(self._rotate_forever(), self._watch_policies(), *followers)

    async def _rotate_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.rotate(await self.replica.sync_ca() if self.replica else None)

    async def _watch_policies(self) -> None:
        """Scan, read and compile in a worker thread: ADS, the node API, ext_authz and
        /healthz keep being served while a large change compiles."""
        while True:
            interval = self.policies.next_poll(POLICY_POLL_SECONDS)
            if self.replica is not None:  # woken by the store's watch as soon as it read one
                await self.replica.source.changed(interval)
            else:
                await written_or_timeout(self.policies.wake_fd, interval)
            affected = await asyncio.to_thread(self.policies.reload_if_changed)
            if affected is not None:
                self._publish_to_workers()  # they compile while the sidecars' snapshots build
                await self.xds.publish_off_loop(affected)
                settle_collections()

    def tick(self) -> None:
        """One round of everything `run` does periodically."""
        self.rotate()
        self.reload_policies()

    def reload_policies(self) -> None:
        """Apply a policy change once it settled (blocking; `run` does this off the loop)."""
        affected = self.policies.reload_when_settled()
        if affected is not None:
            self._publish_to_workers()
            self.xds.publish(affected)

    def _push_all(self) -> None:
        """Rebuild every snapshot in a worker thread (seconds for a large mesh)."""
        task = asyncio.get_running_loop().create_task(self.xds.publish_off_loop(None))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def rotate(self, changed: bool | None = None) -> None:
        """Apply due CA transitions (`changed`: the shared CA already did) and renew the
        server's own certificate when due."""
        assert self.ca is not None and self.endpoint is not None
        assert self.xds_endpoint is not None
        if self.ca.rotate() if changed is None else changed:
            self._publish()
            self._push_all()  # JWT-SVID keys of the trust domain may be in jwt_authn
            roots = self.ca.bundle().x509_pem()
            for tls in self._python_tls():
                tls.update(roots_pem=roots)
            if self.authz_workers is not None:
                self.authz_workers.update_tls(roots)
            self.xds_endpoint.credentials.update(roots_pem=roots)
        if self.clock.now() >= self._server_cert_renew_at:
            self._issue_server_svid()
            for tls in self._python_tls():
                tls.update()
            if self.authz_workers is not None:
                self.authz_workers.update_tls(None)
            self.xds_endpoint.credentials.update(
                chain_pem=(self.data_dir / SERVER_CERT).read_bytes()
            )

    def _python_tls(self) -> list[ServerTls]:
        """The listeners whose TLS ends in Python: the node API's and the ext_authz front's."""
        assert self.endpoint is not None
        return [self.endpoint.tls] + ([self._authz_tls] if self._authz_tls else [])

    async def stop(self) -> None:
        if self.console is not None:
            await self.console.stop()
        if self.health is not None:
            await self.health.stop()
        if self._admin is not None:
            self._admin.stop()
        if self.authz_http is not None:
            self.authz_http.close()
        if self.authz_workers is not None:
            await self.authz_workers.stop()
        if self.xds_endpoint is not None:
            await self.xds_endpoint.stop()
        if self.endpoint is not None:
            await self.endpoint.stop()
        if self.replica is not None:
            await self.replica.close()
        # its inotify instance, not left to the garbage collector; after a reload still
        # running in its worker thread (the cancelled task did not stop the thread)
        await asyncio.to_thread(self.policies.close)


def replica_name(host: str, port: int) -> str:
    """`HOST:PORT` of the ADS listener, with this machine's name for a wildcard address."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"{host}:{port}"
