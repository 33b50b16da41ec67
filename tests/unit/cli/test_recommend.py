"""`meshwarden recommend`: observed flows → dry-run ALLOW policies that allow exactly them."""

import json
from pathlib import Path

import pytest
from meshwarden.engine import Request, decide, load

from meshwarden.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "recommend" / "mesh.yaml"
TD = "spiffe://example.org"
FRONTEND, BACKEND = f"{TD}/ns/shop/sa/frontend", f"{TD}/ns/shop/sa/backend"
CRON, SHELL = f"{TD}/ns/ops/sa/cron", f"{TD}/ns/ops/sa/shell"


def _flow(
    n: int,
    src: str | None,
    to: str,
    port: int,
    method: str | None = None,
    path: str | None = None,
    ip: str | None = None,
    decision: str = "allow",
) -> dict:
    return {
        "time": f"2026-12-06T10:{n:02d}:00.000Z",
        "sourceIdentity": src,
        "sourceIp": ip,
        "workload": to,
        "port": port,
        "protocol": "http" if method else "tcp",
        "method": method,
        "path": path,
        "status": 200,
        "decision": decision,
        "policy": "default:allow",
        "rule": None,
        "dryRun": None,
        "traceId": None,
    }


FLOWS = [
    *[
        _flow(i, FRONTEND, "shop/backend-1", 8080, "GET", f"/api/items/{i}?page=2")
        for i in range(5)
    ],
    _flow(10, FRONTEND, "shop/backend-2", 8080, "GET", "/api/catalogue"),
    _flow(11, FRONTEND, "shop/backend-1", 8080, "POST", "/api/cart"),
    _flow(12, CRON, "shop/backend-1", 8080, "POST", "/admin/reindex"),
    _flow(13, SHELL, "shop/backend-1", 8080, "GET", "/admin/status"),
    _flow(14, None, "shop/backend-1", 8080, "GET", "/health", ip="127.0.0.9"),
    _flow(15, BACKEND, "shop/db-1", 5432),
    *[
        _flow(20 + i, FRONTEND, "shop/frontend-1", 8080, "GET", f"/{c}")
        for i, c in enumerate("abcde")
    ],
    _flow(30, CRON, "shop/db-1", 5432, decision="deny"),
    # the source's own record of a connection (egress): allowed there, not evidence that the
    # destination let it in
    {**_flow(31, SHELL, "shop/db-1", 5432), "direction": "egress", "sourceWorkload": "ops/shell"},
]


@pytest.fixture
def written(tmp_path, capsys):
    flows = tmp_path / "flows.ndjson"
    flows.write_text("".join(json.dumps(f) + "\n" for f in FLOWS))
    out = tmp_path / "out"
    code = main(
        ["recommend", str(FIXTURE), "--flows", str(flows), "--since", "3650d", "-o", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return out, captured


def _enforced(out: Path, tmp_path: Path):
    """The recommended policies switched to enforce, compiled with the fixture."""
    for file in out.rglob("*.yaml"):
        file.write_text(file.read_text().replace("mode: dry-run", "mode: enforce"))
    result = load([str(FIXTURE), str(out)])
    assert result.compiled is not None and not result.diagnostics, result.diagnostics
    return result.compiled


def _allowed(mesh, to: str, port: int, src: str | None, method=None, path=None, ip=None) -> bool:
    request = Request.build(to, port, identity=src, source_ip=ip, method=method, path=path)
    return decide(mesh.plan(to), request).allowed


def test_the_policies_allow_every_observed_flow_and_nothing_else(written, tmp_path):
    out, _ = written
    mesh = _enforced(out, tmp_path)
    for f in FLOWS:
        if f["decision"] == "allow" and f.get("direction") != "egress":
            assert _allowed(
                mesh,
                f["workload"],
                f["port"],
                f["sourceIdentity"],
                f["method"],
                f["path"],
                f["sourceIp"],
            ), f
    assert not _allowed(mesh, "shop/db-1", 5432, CRON)  # denied when observed: not proposed
    assert not _allowed(mesh, "shop/db-1", 5432, SHELL)  # an egress record proposes nothing
    assert not _allowed(mesh, "shop/backend-1", 8080, FRONTEND, "DELETE", "/api/items/1")
    assert not _allowed(mesh, "shop/backend-1", 8080, FRONTEND, "GET", "/api/cart")
    assert not _allowed(mesh, "shop/backend-1", 8080, BACKEND, "GET", "/api/catalogue")
    assert not _allowed(mesh, "shop/backend-1", 8080, None, "GET", "/health", "127.0.0.10")
    assert not _allowed(mesh, "shop/frontend-1", 8080, FRONTEND, "GET", "/f")  # no /* at root
    assert _allowed(mesh, "shop/backend-2", 8080, FRONTEND, "GET", "/api/items/99")  # /api/items/*


def test_rules_say_what_they_cover_and_why_they_are_as_wide_as_they_are(written):
    out, captured = written
    backend = (out / "shop" / "recommended-backend.yaml").read_text()
    assert "mode: dry-run" in backend
    assert '"meshwarden.io/dry-run-since"' in backend
    assert "# 7 flow(s), first 2026-12-06T10:00:00.000Z, last 2026-12-06T10:11:00.000Z" in backend
    assert "# /api/items/* stands for 5 observed paths under it" in backend
    assert "# namespace ops: all 2 of its identities were seen" in backend
    assert '{namespaces: ["ops"]}' in backend
    assert "# 127.0.0.9 is a plaintext caller" in backend and '["127.0.0.9/32"]' in backend
    assert '{ports: [8080], methods: ["POST"], paths: ["/api/cart"]}' in backend
    frontend = (out / "shop" / "recommended-frontend.yaml").read_text()
    assert '"/a", "/b", "/c", "/d", "/e"' in frontend and '"/*"' not in frontend
    assert "1 flow(s) left out: denied by the mesh when observed" in captured.err
    assert f"{out}/shop/recommended-db.yaml: shop/recommended-db, 1 rule(s)" in captured.out


def test_written_policies_pass_check_strict_and_are_not_overwritten_by_accident(written, capsys):
    out, _ = written
    assert main(["check", "--strict", str(FIXTURE), str(out)]) == 0
    capsys.readouterr()
    flows = out.parent / "flows.ndjson"
    again = ["recommend", str(FIXTURE), "--flows", str(flows), "--since", "3650d", "-o", str(out)]
    assert main(again) == 2
    assert "use --force" in capsys.readouterr().err
    assert main([*again, "--force"]) == 0


def test_input_errors_exit_2_and_no_usable_flow_exits_1(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["recommend", str(FIXTURE), "-o", out]) == 2
    assert "--flows FILE" in capsys.readouterr().err
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"time": "2026-12-06T10:00:00Z", "workload": "shop/db-1", "port": 1}\nnope\n')
    assert main(["recommend", str(FIXTURE), "--flows", str(bad), "-o", out]) == 2
    assert f"{bad}:2: not a JSON flow record" in capsys.readouterr().err
    bad.write_text("")
    assert main(["recommend", str(FIXTURE), "--flows", str(bad), "-o", out]) == 1
