"""One Envoy with static resources for the differential tests: policies compiled from plain
documents, SVIDs written as files, the Envoy process started and awaited through its admin
socket, and stopped."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import CompiledMesh, SpiffeId, check_documents, parse_text
from meshwarden.identities import CertificateAuthority, generate_key, private_key_pkcs8_pem
from meshwarden.xds import envoy_binary

from meshwarden._sidecars import admin_request


def write_svid(ca: CertificateAuthority, spiffe_id: str, folder: Path) -> tuple[str, str]:
    """(chain file, key file) of a fresh X.509-SVID for `spiffe_id`."""
    key = generate_key()
    svid = ca.sign_x509_svid(key.public_key(), SpiffeId.parse(spiffe_id))
    name = spiffe_id.rsplit("/", 3)[-3] + "-" + spiffe_id.rsplit("/", 1)[-1]
    chain, key_file = folder / f"{name}.pem", folder / f"{name}.key"
    chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in svid.chain))
    key_file.write_bytes(private_key_pkcs8_pem(key))
    return str(chain), str(key_file)


def compile_docs(docs: list[dict[str, Any]]) -> CompiledMesh:
    documents, problems = parse_text(yaml.safe_dump_all(docs, sort_keys=False))
    assert not problems, problems
    compiled, found = check_documents(documents)
    assert compiled is not None, [str(d) for d in found]
    return compiled


@contextmanager
def static_envoy(folder: Path, listeners: list[Any], clusters: list[Any]) -> Iterator[None]:
    """Envoy serving `listeners` and `clusters` until the block ends (ready when it starts)."""
    admin = folder / "admin.sock"
    config = {
        "admin": {"address": {"pipe": {"path": str(admin), "mode": 0o600}}},
        "staticResources": {"listeners": listeners, "clusters": clusters},
    }
    (folder / "envoy.json").write_text(json.dumps(config))
    log = (folder / "envoy.log").open("w")
    argv = [
        envoy_binary(),
        "-c",
        str(folder / "envoy.json"),
        "--concurrency",
        "1",
        "--use-dynamic-base-id",
        "--log-level",
        "warning",
    ]
    envoy = subprocess.Popen(argv, stdout=log, stderr=log)
    try:
        wait_ready(admin, envoy, folder / "envoy.log")
        yield
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        log.close()


def wait_ready(admin: Path, envoy: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert envoy.poll() is None, f"Envoy exited:\n{log.read_text()[-3000:]}"
        try:
            if admin_request(admin, "/ready", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"Envoy not ready:\n{log.read_text()[-3000:]}")


def http_ext_authz_documents(
    trust_domain: str, address: str, app_port: int, allowed: str
) -> list[dict[str, Any]]:
    """A mesh in `enforcement: ext-authz` over `extAuthz.transport: http` (2 s timeout): one
    workload a/w (identity `ns/a/sa/w`) on `address`:8080 → `app_port`, which only `allowed`
    may call."""
    docs: list[dict[str, Any]] = [
        {
            "kind": "Mesh",
            "metadata": {"name": "m"},
            "spec": {
                "trustDomain": trust_domain,
                "mtls": "PERMISSIVE",
                "enforcement": "ext-authz",
                "extAuthz": {"transport": "http", "timeout": "2s"},
            },
        },
        {
            "kind": "Workload",
            "metadata": {"name": "w", "namespace": "a", "labels": {"app": "w"}},
            "spec": {
                "serviceAccount": "w",
                "addresses": [address],
                "ports": [{"port": 8080, "targetPort": app_port, "protocol": "http"}],
            },
        },
        {
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "caller-only", "namespace": "a"},
            "spec": {"rules": [{"from": [{"identities": [allowed]}]}]},
        },
    ]
    for doc in docs:
        doc["apiVersion"] = "meshwarden.io/v1alpha1"
    return docs
