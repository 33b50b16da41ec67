import json
from pathlib import Path

from meshwarden.cli import main

SHOP = str(Path(__file__).resolve().parents[3] / "examples" / "shop")
SEED = str(Path(__file__).resolve().parents[3] / "examples" / "seed")


def test_check_exit_codes_valid_invalid_and_usage(tmp_path, capsys):
    assert main(["check", SHOP]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: meshwarden.io/v1alpha1\nkind: Workload\nmetadata: {name: X}\n")
    assert main(["check", str(bad)]) == 1
    assert f"{bad}:3:18: error:" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_check_json_lists_every_diagnostic(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: meshwarden.io/v1alpha1\nkind: Nope\nmetadata: {name: a}\n---\n"
        "apiVersion: meshwarden.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\n"
        "spec: {mtls: LOOSE}\n"
    )
    assert main(["check", str(bad), "-o", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["valid"]
    assert [(d["line"], d["column"]) for d in report["diagnostics"]] == [(2, 7), (8, 14)]


def test_seed_example_only_frontend_reaches_backend(capsys):
    base = ["explain", SEED, "--to", "shop/backend-1", "--port", "8080", "-o", "json"]
    assert main([*base, "--from-workload", "shop/frontend-1"]) == 0
    assert json.loads(capsys.readouterr().out)["policy"] == "shop/backend-access-policy"
    assert main([*base, "--from", "spiffe://example.org/ns/shop/sa/backend"]) == 1
    assert json.loads(capsys.readouterr().out)["policy"] == "default:deny"
    assert (
        main(
            [
                "explain",
                SEED,
                "--to",
                "shop/frontend-1",
                "--port",
                "8080",
                "--from-workload",
                "shop/backend-1",
                "-o",
                "json",
            ]
        )
        == 1
    )
    assert json.loads(capsys.readouterr().out)["policy"] == "default:deny"


def test_explain_input_errors_exit_2_with_a_reason(capsys):
    base = ["explain", SHOP, "--to", "shop/backend-1"]
    assert main([*base, "--port", "1"]) == 2
    assert "has no such port" in capsys.readouterr().err
    assert main(["explain", SHOP, "--to", "shop/nope", "--port", "8080"]) == 2
    assert main([*base, "--port", "8080", "--from", "spiffe://Bad/x"]) == 2
    assert "lowercase" in capsys.readouterr().err
    assert main([*base, "--port", "8080", "--jwt-claims", "{not json"]) == 2
    assert main(["explain", SHOP, "--to", "shop/db-1", "--port", "5432", "--path", "/x"]) == 2
    assert "tcp" in capsys.readouterr().err


def test_explain_text_names_every_policy_and_the_cause(capsys):
    code = main(
        [
            "explain",
            SHOP,
            "--to",
            "shop/backend-1",
            "--port",
            "8080",
            "--from-workload",
            "shop/frontend-1",
            "--method",
            "DELETE",
            "--path",
            "/api/x",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("DENY")
    for policy in (
        "shop/backend-access",
        "shop/audit-admin",
        "shop/tighten-frontend",
        "meshwarden-system/no-debug-anywhere",
    ):
        assert policy in out
    assert "dry-run: shop/tighten-frontend would DENY" in out


def test_offline_demo_walkthrough_passes(capsys):
    assert main(["demo", "--offline"]) == 0
    assert "all rows as expected" in capsys.readouterr().out
