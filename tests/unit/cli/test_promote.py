"""`meshwarden promote`: dry-run → enforce in place, refused while flows show would-deny."""

import json
import shutil
import time
from pathlib import Path

from meshwarden.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "recommend" / "mesh.yaml"
FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
POLICY = """\
# Trying out who may call the backend.
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-callers, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}   # both replicas
  mode: dry-run    # promote me
  rules:
  - from: [{identities: ["spiffe://example.org/ns/shop/sa/frontend"]}]
---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: db-callers, namespace: shop}
spec: {selector: {matchLabels: {app: db}}, mode: "dry-run", rules: [{from: [{namespaces: [shop]}]}]}
"""


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copy(FIXTURE, tmp_path / "mesh.yaml")
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY)
    return tmp_path, policy


def _flows(tmp_path: Path, *dry_runs: tuple[str, dict | None]) -> str:
    path = tmp_path.parent / f"{tmp_path.name}-flows.ndjson"
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    path.write_text(
        "".join(
            json.dumps(
                {
                    "time": now,
                    "sourceIdentity": src,
                    "sourceIp": None,
                    "workload": "shop/backend-1",
                    "port": 8080,
                    "protocol": "http",
                    "method": "GET",
                    "path": "/x",
                    "status": 200,
                    "decision": "allow",
                    "policy": "default:allow",
                    "rule": None,
                    "dryRun": dry,
                    "traceId": None,
                }
            )
            + "\n"
            for src, dry in dry_runs
        )
    )
    return str(path)


def test_promote_edits_only_the_mode_values_keeping_comments_and_layout(tmp_path, capsys):
    folder, policy = _setup(tmp_path)
    assert main(["promote", "shop/backend-callers", "shop/db-callers", str(folder)]) == 0
    expected = POLICY.replace("mode: dry-run    # promote me", "mode: enforce    # promote me")
    expected = expected.replace('mode: "dry-run"', "mode: enforce")
    assert policy.read_text() == expected
    assert "shop/backend-callers: dry-run -> enforce" in capsys.readouterr().out
    assert main(["promote", "shop/backend-callers", str(folder)]) == 0
    assert "already enforced" in capsys.readouterr().out


def test_a_would_deny_in_the_window_refuses_every_promotion_and_names_the_flow(tmp_path, capsys):
    folder, policy = _setup(tmp_path)
    flows = _flows(
        tmp_path,
        (FRONTEND, {"decision": "allow", "policy": "shop/backend-callers"}),
        ("spiffe://example.org/ns/ops/sa/cron", {"decision": "deny", "policy": "default:deny"}),
    )
    code = main(
        [
            "promote",
            "shop/backend-callers",
            "shop/db-callers",
            str(folder),
            "--require-clean",
            "24h",
            "--flows",
            flows,
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert (
        "shop/backend-callers: would deny spiffe://example.org/ns/ops/sa/cron -> "
        "shop/backend-1:8080 GET /x" in err
    )
    assert "nothing was changed" in err
    assert policy.read_text() == POLICY


def test_a_clean_window_promotes(tmp_path, capsys):
    folder, policy = _setup(tmp_path)
    flows = _flows(tmp_path, (FRONTEND, {"decision": "allow", "policy": "shop/backend-callers"}))
    assert (
        main(
            [
                "promote",
                "shop/backend-callers",
                str(folder),
                "--require-clean",
                "24h",
                "--flows",
                flows,
            ]
        )
        == 0
    )
    assert "mode: enforce    # promote me" in policy.read_text()
    assert 'mode: "dry-run"' in policy.read_text()  # only the named policy changed


def test_usage_errors_exit_2(tmp_path, capsys):
    folder, _ = _setup(tmp_path)
    assert main(["promote", "shop/nope", str(folder)]) == 2
    assert "no AuthorizationPolicy shop/nope" in capsys.readouterr().err
    assert main(["promote", "shop/backend-callers", str(folder), "--require-clean", "1h"]) == 2
    assert main(["promote", str(folder)]) == 2


EGRESS = """\
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: frontend-egress, namespace: shop}
spec:
  direction: egress
  selector: {matchLabels: {app: frontend}}
  mode: dry-run
  rules: [{to: [{workloads: {matchLabels: {app: backend}}}]}]
"""


def _egress_record(destination: str, port: int, identity: str) -> dict:
    """What frontend-1's sidecar reports of a connection through one of its upstreams."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "direction": "egress",
        "source": FRONTEND,
        "sourceIdentity": FRONTEND,
        "sourceIp": "127.0.0.1",
        "sourceWorkload": "shop/frontend-1",
        "workload": destination,
        "port": port,
        "protocol": "tcp",
        "decision": "allow",
        "policy": "default:allow",
        "rule": None,
        "dryRun": None,
        "destinationIdentity": identity,
    }


def test_an_egress_policy_is_promoted_only_if_no_egress_record_would_be_denied(tmp_path, capsys):
    folder, _ = _setup(tmp_path)
    policy = folder / "egress.yaml"
    policy.write_text(EGRESS)
    flows = tmp_path.parent / f"{tmp_path.name}-egress.ndjson"
    backend = _egress_record("shop/backend-1", 8080, "spiffe://example.org/ns/shop/sa/backend")
    db = _egress_record("shop/db-1", 5432, "spiffe://example.org/ns/shop/sa/db")
    # the db's own (ingress) record of the same connection does not count for egress
    ingress = {**db, "direction": "ingress", "workload": "shop/db-1"}
    flows.write_text("".join(json.dumps(r) + "\n" for r in (backend, db, ingress)))
    argv = ["promote", "shop/frontend-egress", str(folder), "--require-clean", "24h"]
    assert main([*argv, "--flows", str(flows)]) == 1
    err = capsys.readouterr().err
    assert f"shop/frontend-egress: would deny {FRONTEND} -> shop/db-1:5432 tcp" in err
    assert policy.read_text() == EGRESS
    flows.write_text(json.dumps(backend) + "\n")
    assert main([*argv, "--flows", str(flows)]) == 0
    assert "mode: enforce" in policy.read_text()
    assert "shop/frontend-egress: dry-run -> enforce" in capsys.readouterr().out
