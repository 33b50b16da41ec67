"""`AuthzWorkers`: a real worker process serving the ext_authz HTTP front over mTLS denies until
it has the control plane's policies, then decides with them; a CA rotation reaches its next
handshake (a removed CA is refused) and a renewed server certificate its next handshake; its
check durations reach the control plane's recorder; `stop` ends it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    SystemClock,
    generate_key,
    private_key_pkcs8_pem,
)

from meshwarden import _authz_workers as authz_workers
from meshwarden._authz_workers import AuthzWorkers, WorkerFiles
from meshwarden._policies import Policies

TD = "example.org"
API = f"spiffe://{TD}/ns/a/sa/api"
CALLER = f"spiffe://{TD}/ns/b/sa/client"


def _policies(folder: Path) -> Policies:
    docs: list[dict[str, Any]] = [
        {"kind": "Mesh", "metadata": {"name": "m"}, "spec": {"trustDomain": TD}},
        {
            "kind": "Workload",
            "metadata": {"name": "api", "namespace": "a"},
            "spec": {"serviceAccount": "api", "ports": [{"port": 8080, "protocol": "http"}]},
        },
        {
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "client", "namespace": "a"},
            "spec": {"rules": [{"from": [{"identities": [CALLER]}]}]},
        },
    ]
    for doc in docs:
        doc["apiVersion"] = "meshwarden.io/v1alpha1"
    folder.mkdir()
    (folder / "mesh.yaml").write_text(yaml.safe_dump_all(docs))
    policies = Policies(folder, settle=0)
    policies.reload_when_settled()
    assert policies.mesh is not None and policies.contents is not None
    return policies


def _svid(ca: CertificateAuthority, spiffe_id: str, folder: Path) -> tuple[Path, Path]:
    folder.mkdir()
    key = generate_key()
    svid = ca.sign_x509_svid(key.public_key(), SpiffeId.parse(spiffe_id))
    chain, key_file = folder / "chain.pem", folder / "key.pem"
    chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain))
    key_file.write_bytes(private_key_pkcs8_pem(key))
    key_file.chmod(0o600)
    return chain, key_file


def _client(ca: CertificateAuthority, folder: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.load_cert_chain(*_svid(ca, API, folder))
    return context


CHECK = (
    "GET /meshwarden.authz/check/x HTTP/1.1\r\nhost: api.a:8080\r\ncontent-length: 0\r\n"
    "x-meshwarden-workload: a/api\r\nx-meshwarden-port: 8080\r\n"
    f"x-meshwarden-peer: ={CALLER}\r\nx-meshwarden-source: =10.1.2.3\r\n"
    "x-meshwarden-jwt: =\r\n\r\n"
).encode()


async def _server_certificate(port: int, context: ssl.SSLContext) -> bytes:
    """The DER of the certificate the front presents."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return bytes(der)


async def _check(port: int, context: ssl.SSLContext) -> tuple[int, bytes] | str:
    """(status, body) of one check as the sidecar of a/api, or why the handshake failed."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        writer.write(CHECK)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        writer.close()
        return int(head.split(b" ")[1]), body
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as refused:
        return type(refused).__name__


def _leaf(chain: Path) -> bytes:
    return x509.load_pem_x509_certificate(chain.read_bytes()).public_bytes(Encoding.DER)


async def _until(condition: Any, timeout: float = 180) -> None:
    """Until `condition()`: a starting worker imports and compiles at nice 19, which a host
    busy at normal priority may starve for a minute."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def test_a_worker_denies_until_it_has_policies_then_follows_them_and_the_ca(
    tmp_path: Path,
) -> None:
    old, new = (CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock()) for _ in "ab")
    chain, key = _svid(old, f"spiffe://{TD}/ns/cp/sa/server", tmp_path / "server")
    policies = _policies(tmp_path / "policies")
    recorded: list[tuple[float, dict[str, str]]] = []
    workers = AuthzWorkers(
        1,
        ("127.0.0.1", 0),
        WorkerFiles(chain, key),
        str(tmp_path / "policies"),
        lambda seconds, labels: recorded.append((seconds, dict(labels))),
    )
    old_client, new_client = _client(old, tmp_path / "old"), _client(new, tmp_path / "new")
    first_leaf = _leaf(chain)

    async def scenario() -> list[Any]:
        port = await workers.start(old.bundle().x509_pem(), None, "")  # no valid policies yet
        got: list[Any] = [await _check(port, old_client)]  # no policies yet
        assert policies.mesh is not None
        workers.publish(policies.contents, policies.mesh.version)
        await _until(lambda: workers.current)
        got.append(await _check(port, old_client))
        await _until(lambda: len(recorded) == 2)
        workers.update_tls(new.bundle().x509_pem())  # a rotation that removed the old CA
        got += [await _check(port, old_client), await _check(port, new_client)]
        presented = [await _server_certificate(port, new_client)]
        renewed, _ = _svid(new, f"spiffe://{TD}/ns/cp/sa/server", tmp_path / "renewed")
        renewed.replace(chain)  # the control plane rewrites server.pem/.key, then says so
        (tmp_path / "renewed" / "key.pem").replace(key)
        workers.update_tls(None)
        deadline = time.monotonic() + 60  # the next handshakes, until one presents another
        while time.monotonic() < deadline:  # certificate (the worker reads the files itself)
            presented.append(await _server_certificate(port, new_client))
            if presented[-1] != presented[0]:
                break
            await asyncio.sleep(0.1)
        got.append((presented[0], presented[-1], _leaf(chain)))
        [pid] = [w["pid"] for w in workers.status()]
        await workers.stop()
        got.append(pid)
        return got

    before, after, old_refused, new_allowed, presented, pid = asyncio.run(scenario())
    assert before[0] == 403 and b"authz:unavailable" in before[1]
    assert after == (200, b"")
    assert [labels for _, labels in recorded] == [
        {"decision": "deny", "workload": ""},
        {"decision": "allow", "workload": "a/api"},
    ]
    assert old_refused in ("SSLError", "ConnectionResetError", "IncompleteReadError")
    assert new_allowed == (200, b"")
    before_renewal, after_renewal, renewed_leaf = presented
    assert before_renewal == first_leaf and after_renewal == renewed_leaf != first_leaf
    assert not Path(f"/proc/{pid}").exists()


def test_a_burst_of_changes_starts_one_worker_at_a_time_and_ends_on_the_last(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    chain, key = _svid(ca, f"spiffe://{TD}/ns/cp/sa/server", tmp_path / "server")
    policies = _policies(tmp_path / "policies")
    versions = []
    workers = AuthzWorkers(
        1, ("127.0.0.1", 0), WorkerFiles(chain, key), "policies", lambda *_: None
    )

    def change(n: int) -> None:
        path = tmp_path / "policies" / "mesh.yaml"
        before = CALLER if n == 0 else f"spiffe://{TD}/ns/b/sa/c{n - 1}"
        path.write_text(path.read_text().replace(before, f"spiffe://{TD}/ns/b/sa/c{n}"))
        policies.reload_when_settled()
        assert policies.mesh is not None
        versions.append(policies.mesh.version)
        workers.publish(policies.contents, policies.mesh.version)

    async def scenario() -> tuple[str, int]:
        assert policies.mesh is not None
        await workers.start(ca.bundle().x509_pem(), policies.contents, policies.mesh.version)
        for n in range(4):
            change(n)
        await _until(lambda: workers.current)
        [serving] = workers.status()
        started = workers._generation
        await workers.stop()
        return serving["version"], started

    serving, started = asyncio.run(scenario())
    assert len(set(versions)) == 4 and serving == versions[-1]
    assert started <= 3  # the first, then at most one compiling and one for what came meanwhile


async def _check_on(sock: socket.socket, context: ssl.SSLContext) -> tuple[int, bytes] | str:
    """`_check` on a TCP connection made before: the handshake and the check on it."""
    try:
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=context, server_hostname="front"
        )
        writer.write(CHECK)
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        return int(head.split(b" ")[1]), b""
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as refused:
        return type(refused).__name__


def test_connections_queued_for_a_worker_that_dies_are_served_by_its_replacement(
    tmp_path: Path,
) -> None:
    """The workers accept from one queue, the control plane's: connections a worker had not
    accepted yet when it exited wait for the next worker instead of being reset (with a
    listener per worker, each would have been a check failing closed; a retiring worker's
    queue is the same case)."""
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    chain, key = _svid(ca, f"spiffe://{TD}/ns/cp/sa/server", tmp_path / "server")
    policies = _policies(tmp_path / "policies")
    workers = AuthzWorkers(
        1, ("127.0.0.1", 0), WorkerFiles(chain, key), str(tmp_path / "policies"), lambda *_: None
    )
    client = _client(ca, tmp_path / "client")

    async def scenario() -> list[Any]:
        assert policies.mesh is not None
        port = await workers.start(ca.bundle().x509_pem(), policies.contents, policies.mesh.version)
        await _until(lambda: workers.current)
        [first] = [w["pid"] for w in workers.status()]
        os.kill(first, signal.SIGSTOP)  # accepts nothing from now on
        queued = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
        os.kill(first, signal.SIGKILL)
        await _until(lambda: [w["pid"] for w in workers.status()] not in ([first], []))
        try:
            return [await _check_on(sock, client) for sock in queued]
        finally:
            await workers.stop()

    assert asyncio.run(scenario()) == [(200, b"")] * 10


def test_a_workers_front_ends_an_idle_peer_and_the_control_plane_counts_it(
    tmp_path: Path,
) -> None:
    """A TLS peer that never sends a request is closed by the worker's front after its idle
    timeout (short here; 30 s in service), and `/healthz` `extAuthz.workers[]` says so."""
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    chain, key = _svid(ca, f"spiffe://{TD}/ns/cp/sa/server", tmp_path / "server")
    policies = _policies(tmp_path / "policies")
    workers = AuthzWorkers(
        1, ("127.0.0.1", 0), WorkerFiles(chain, key), "policies", lambda *_: None, None, 0.5
    )
    client = _client(ca, tmp_path / "client")

    async def scenario() -> tuple[bytes, dict[str, Any]]:
        assert policies.mesh is not None
        port = await workers.start(ca.bundle().x509_pem(), policies.contents, policies.mesh.version)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            async with asyncio.timeout(60):
                left = await reader.read()  # until the front closes it
            writer.close()
            await _until(lambda: workers.status()[0]["idleEnded"] == 1, 60)
            await _until(lambda: workers.status()[0]["connections"] == 0, 60)
            return left, workers.status()[0]
        finally:
            await workers.stop()

    left, status = asyncio.run(scenario())
    assert left == b""
    assert (status["idleEnded"], status["connections"]) == (1, 0)


# A process at normal priority that keeps one core busy for at most 120 s.
BUSY = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def _every_core_busy() -> Iterator[None]:
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait(10)


def test_a_worker_no_other_serves_beside_starts_on_a_host_kept_busy(tmp_path: Path) -> None:
    """A slot's first worker (at start, or replacing one that died) has no other answering for
    it: every check on the slot fails closed until it listens. So it prepares at normal
    priority, and on a host whose every core is busy at normal priority it listens well within
    the start timeout (at nice 19 its imports alone took over a minute there, and `server` did
    not start)."""
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    chain, key = _svid(ca, f"spiffe://{TD}/ns/cp/sa/server", tmp_path / "server")
    policies = _policies(tmp_path / "policies")
    workers = AuthzWorkers(
        1, ("127.0.0.1", 0), WorkerFiles(chain, key), "policies", lambda *_: None
    )

    async def scenario() -> list[dict[str, Any]]:
        assert policies.mesh is not None
        try:
            await workers.start(ca.bundle().x509_pem(), policies.contents, policies.mesh.version)
            return workers.status()
        finally:
            await workers.stop()

    with _every_core_busy():
        [worker] = asyncio.run(scenario())
    assert worker["current"]


def test_a_change_whose_worker_starved_reaches_the_front_on_a_host_kept_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change's worker prepares at nice 19 beside the one serving; if a busy host starves it
    past the start timeout (5 s here, 60 s in service) it is killed, and the next one prepares
    at normal priority: the change reaches the front instead of waiting for an idle host (at
    nice 19 each next one starved too, and the old version went on deciding)."""
    ca = CertificateAuthority(CaConfig(TrustDomain(TD)), SystemClock())
    chain, key = _svid(ca, f"spiffe://{TD}/ns/cp/sa/server", tmp_path / "server")
    policies = _policies(tmp_path / "policies")
    workers = AuthzWorkers(
        1, ("127.0.0.1", 0), WorkerFiles(chain, key), "policies", lambda *_: None
    )
    path = tmp_path / "policies" / "mesh.yaml"

    async def scenario() -> tuple[list[dict[str, Any]], str]:
        assert policies.mesh is not None
        try:
            await workers.start(ca.bundle().x509_pem(), policies.contents, policies.mesh.version)
            monkeypatch.setattr(authz_workers, "START_TIMEOUT", 5.0)
            path.write_text(path.read_text().replace(CALLER, f"spiffe://{TD}/ns/b/sa/other"))
            policies.reload_when_settled()
            assert policies.mesh is not None
            with _every_core_busy():
                workers.publish(policies.contents, policies.mesh.version)
                await _until(lambda: workers.current, timeout=120)
            return workers.status(), policies.mesh.version
        finally:
            await workers.stop()

    [worker], version = asyncio.run(scenario())
    assert worker["version"] == version and worker["current"]
