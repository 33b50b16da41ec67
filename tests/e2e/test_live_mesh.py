"""`meshwarden up` with real Envoy sidecars: identity, L7, JWT and IP-fallback rules enforced
live; changes pushed without restarts; a broken file changes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshwarden.demo import DemoIdp

from .._loopback import claim_net, free_port
from ._live import (
    MeshwardenUp,
    exchange,
    reading_where,
    request,
    sample_app,
    static_files,
    wait_for,
)
from ._mesh import (
    Document,
    app,
    jwt_issuer,
    mesh_document,
    policy,
    shop_pair,
    upstream,
    workload,
    write,
)

ISSUER = "https://idp.test.example"
PARTNER = "https://partner.test.example"


def live_mesh(v: dict[str, Any]) -> list[Document]:
    loosen = {"meshwarden.io/allow-loosening": v["loosen"]}
    return [
        mesh_document(
            {"trustDomain": "live.test", "mtls": v["mtls"], "defaultPolicy": "deny"},
            annotations=loosen,
        )
    ]


def live_workloads(v: dict[str, Any]) -> list[Document]:
    """The shop pair; ops-1 (uid-attested) calls the backend too; three JWT issuers at the
    backend: inline JWKS, a JWKS URL, and this mesh's own JWT-SVIDs."""
    ops = {
        "addresses": [f"{v['net']}.5"],
        "selectors": [f"unix:uid:{v['uid']}"],
        "upstreams": [upstream("shop/backend", 8080, v["ops_out"])],
    }
    jwks_uri = f"http://127.0.0.1:{v['jwks_port']}/jwks.json"
    return [
        *shop_pair(v["net"], v["front_out"], v["app_port"]),
        workload("ops/ops-1", "ops", ops),
        jwt_issuer(
            "shop/corp", "backend", {"issuer": ISSUER, "audiences": ["backend"], "jwks": v["jwks"]}
        ),
        jwt_issuer("shop/partner", "backend", {"issuer": PARTNER, "jwksUri": jwks_uri}),
        jwt_issuer(
            "shop/mesh-svids",
            "backend",
            {"issuer": "mesh", "spiffeTrustDomain": "live.test", "audiences": ["backend"]},
        ),
    ]


def live_policies(v: dict[str, Any]) -> list[Document]:
    admins = {"namespaces": ["ops"], "jwt": {"issuers": [ISSUER], "claims": {"groups": ["admin"]}}}
    ops_svid = {"jwt": {"subjects": ["spiffe://live.test/ns/ops/sa/ops-1"]}}
    rules = [
        {
            "from": [{"workloads": app("frontend")}],
            "to": [{"methods": v["frontend_methods"], "paths": ["/api/*"]}],
        },
        {"from": [admins], "to": [{"paths": ["/admin/*"]}]},
        {
            "from": [{"ipBlocks": [f"{v['net']}.9/32"]}],
            "to": [{"methods": ["GET"], "paths": ["/public"]}],
        },
        {"from": [{"jwt": {"issuers": [PARTNER]}}], "to": [{"paths": ["/partner/*"]}]},
        {"from": [ops_svid], "to": [{"paths": ["/svid/*"]}]},
    ]
    return [
        policy("shop/backend-access", rules, selector="backend"),
        policy(
            "shop/no-secrets",
            [{"to": [{"paths": ["/api/secret"]}]}],
            selector="backend",
            action="DENY",
        ),
        policy("shop/try-lockdown", [{}], action="DENY", mode="dry-run"),
    ]


class LiveMesh:
    def __init__(self, root: Path, net: str) -> None:
        self.root, self.net = root, net
        self.policies = root / "policies"
        self.policies.mkdir()
        self.idp = DemoIdp(ISSUER)
        self.partner = DemoIdp(PARTNER)
        self.values: dict[str, Any] = {
            "net": net,
            "front_out": free_port(),
            "ops_out": free_port(),
            "app_port": free_port(),
            "issuer": ISSUER,
            "jwks": self.idp.jwks(),
            "mtls": "PERMISSIVE",
            "frontend_methods": ["GET"],
            "uid": os.getuid(),
            "loosen": "false",
            "partner": PARTNER,
            "jwks_port": free_port(),
        }
        self.write()
        self.up = MeshwardenUp(self.policies, root / "data")

    def write(self, **changes: Any) -> None:
        self.values.update(changes)
        for name, documents in (
            ("mesh", live_mesh),
            ("workloads", live_workloads),
            ("policies", live_policies),
        ):
            write(self.policies / f"{name}.yaml", documents(self.values))

    def frontend(self, method: str, path: str) -> int | str:
        return request("127.0.0.1", self.values["front_out"], method, path)

    def ops(self, path: str, token: str | None = None) -> int | str:
        return self.ops_exchange(path, token)[0]

    def ops_exchange(self, path: str, token: str | None = None) -> tuple[int | str, str]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return exchange("127.0.0.1", self.values["ops_out"], "GET", path, headers)

    def plaintext(self, source_last_octet: int, path: str) -> int | str:
        return request(f"{self.net}.3", 8080, "GET", path, source=f"{self.net}.{source_last_octet}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveMesh]:
    # A network of its own (no other run's worker listens there): Envoy would otherwise share
    # the port with another mesh (this test's sidecars turn SO_REUSEPORT off, so that fails).
    mesh = LiveMesh(tmp_path_factory.mktemp("live"), claim_net())
    jwks = {"/jwks.json": mesh.partner.jwks()}
    with sample_app(mesh.values["app_port"]), static_files(mesh.values["jwks_port"], jwks):
        mesh.up.start()
        try:
            yield mesh
        finally:
            assert mesh.up.stop() == 0, mesh.up.log.read_text()[-3000:]


def test_identity_and_l7_rules_are_enforced_by_the_sidecars(live: LiveMesh) -> None:
    assert live.frontend("GET", "/api/items") == 200
    assert live.frontend("POST", "/api/items") == 403  # method not allowed
    assert live.frontend("GET", "/admin/x") == 403  # path not allowed for frontend
    assert live.frontend("GET", "/api//x/../items") == 200  # normalised like the engine


def test_deny_beats_allow_and_dry_run_never_blocks(live: LiveMesh) -> None:
    assert live.frontend("GET", "/api/secret") == 403
    # try-lockdown (DENY every request, dry-run) is in force and blocks nothing:
    assert live.frontend("GET", "/api/other") == 200


def test_jwt_rules_need_a_valid_token_with_the_claims(live: LiveMesh) -> None:
    idp = live.idp
    admin = idp.token(idp.claims(groups=["admin"]))
    assert live.ops("/admin/flush", admin) == 200
    assert live.ops("/admin/flush") == 403  # no token: policies decide, and none allows
    assert live.ops("/admin/flush", idp.token(idp.claims(groups=["dev"]))) == 403
    assert live.ops("/admin/flush", idp.token(idp.claims(groups=["admin"]), forged=True)) == 401
    # A wrong audience is refused by authentication too (Envoy answers 403 for this one case):
    status, body = live.ops_exchange("/admin/flush", idp.token(idp.claims(aud="other")))
    assert (status, body) == (403, "Audiences in Jwt are not allowed")


def test_remote_jwks_and_jwt_svids_of_the_mesh_verify_tokens(live: LiveMesh) -> None:
    partner = live.partner
    assert live.ops("/partner/report", partner.token(partner.claims())) == 200
    assert live.ops("/partner/report", partner.token(partner.claims(), forged=True)) == 401
    fetched = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshwarden",
            "svid",
            "fetch",
            "--socket",
            str(live.root / "data" / "agent" / "workload.sock"),
            "--jwt-audience",
            "backend",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    svid = json.loads(fetched.stdout)["jwtSvid"]
    assert svid["spiffeId"] == "spiffe://live.test/ns/ops/sa/ops-1"
    assert live.ops("/svid/x", svid["token"]) == 200
    assert live.ops("/svid/x") == 403


def test_ip_fallback_applies_only_to_plaintext_peers(live: LiveMesh) -> None:
    assert live.plaintext(9, "/public") == 200
    assert live.plaintext(10, "/public") == 403
    assert live.plaintext(9, "/api/items") == 403


def test_a_live_change_flips_a_decision_and_a_broken_file_changes_nothing(
    live: LiveMesh,
) -> None:
    before = live.up.health()["policyVersion"]
    live.write(frontend_methods=["GET", "POST"])
    assert wait_for(lambda: live.frontend("POST", "/api/items"), 200) == 200
    assert live.up.health()["policyVersion"] != before

    broken = live.policies / "broken.yaml"
    broken.write_text(
        "apiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
        "metadata: {name: oops, namespace: shop}\nspec: {actoin: DENY}\n"
    )
    named = f"{broken}:4:8: error: unknown field"
    report = reading_where(
        live.up.health,
        lambda h: h["status"] == "degraded" and any(named in e for e in h["errors"]),
    )
    assert report["status"] == "degraded"
    assert any(named in e for e in report["errors"]), report["errors"]
    assert live.frontend("POST", "/api/items") == 200  # last good config keeps serving
    broken.unlink()
    assert wait_for(lambda: live.up.health()["status"], "ok") == "ok"


def test_strict_mtls_refuses_plaintext_peers(live: LiveMesh) -> None:
    live.write(mtls="STRICT")
    result = wait_for(lambda: isinstance(live.plaintext(9, "/public"), str), True)
    assert result is True, "a plaintext peer must not get an HTTP answer under STRICT"
    assert live.frontend("GET", "/api/items") == 200
    live.write(mtls="PERMISSIVE")  # a loosening: refused, STRICT stays
    report = reading_where(live.up.health, lambda h: h["lastChangeRejected"] is True)
    assert report["lastChangeRejected"] is True
    assert "mtls would loosen from STRICT to PERMISSIVE" in "".join(report["errors"])
    assert isinstance(live.plaintext(9, "/public"), str)
    live.write(loosen="true")  # accepted when the Mesh document says so
    assert wait_for(lambda: live.plaintext(9, "/public"), 200) == 200
    live.write(loosen="false")


def _envoy_pid(bootstrap: Path) -> int | None:
    """The pid of the Envoy running with `bootstrap` (its `-c` argument), if any."""
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(bootstrap).encode() in args and entry.name.isdigit():
            return int(entry.name)
    return None


def test_a_crashed_sidecar_is_restarted_and_serves_again(live: LiveMesh) -> None:
    bootstrap = live.up.data_dir / "sidecars" / "shop_frontend-1.bootstrap.json"
    crashed = _envoy_pid(bootstrap)
    assert crashed is not None and live.frontend("GET", "/api/items") == 200
    os.kill(crashed, signal.SIGKILL)
    assert wait_for(lambda: live.frontend("GET", "/api/items"), 200) == 200
    assert _envoy_pid(bootstrap) not in (None, crashed)
    assert live.up.process is not None and live.up.process.poll() is None  # `up` kept running
    log = live.up.log.read_text()
    assert f"the Envoy of shop/frontend-1 (pid {crashed}) exited" in log
    assert "restarting it in 1 s (1 exit(s) in a row" in log


def test_make_demo_runs_the_shop_live_and_every_row_matches() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "meshwarden", "demo"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "all rows as expected" in result.stdout
    assert result.stdout.count(" yes ") == 10  # nine requests, then the flipped one
    # the flow log section: the sidecars' own records of the denied requests, with causes
    flows = result.stdout.split("== the flow log")[1]
    assert "401     deny      jwt:invalid" in flows
    assert "meshwarden-system/no-debug-anywhere#0" in flows
    assert "127.0.0.10" in flows  # the plaintext stranger, by address
    # and in traces: the built-in collector got the sidecars' decision spans
    traces = result.stdout.split("== the same decisions in traces")[1]
    assert "deny  jwt:invalid  from spiffe://example.org/ns/ops/sa/ops" in traces
    assert "0 NACKs" in traces
