"""`meshwarden render`: formats, files, JSON for scripts and one-line errors with exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshwarden.cli import main

SEED = "examples/seed"


def test_render_nftables_to_a_file_replaces_a_symlink_instead_of_following_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    out = tmp_path / "web-1.nft"
    out.symlink_to(victim)
    assert main(["render", "nftables", SEED, "--node", "web-1", "--output-file", str(out)]) == 0
    assert victim.read_text() == "keep me\n"
    assert not out.is_symlink() and "table inet meshwarden {" in out.read_text()
    assert capsys.readouterr().out == ""


def test_render_iptables_for_docker_and_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "render",
                "iptables",
                SEED,
                "--host",
                "docker-1",
                "--chain",
                "DOCKER-USER",
                "--interface",
                "br-shop",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "-A DOCKER-USER -o br-shop -p tcp -m conntrack --ctorigdstport 80" in text
    assert main(["render", "aws-security-group", SEED, "--host", "web-1", "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["node"] == "web-1" and document["format"] == "aws-security-group"
    assert document["ports"][0] == {
        "protocol": "tcp",
        "ports": "22",
        "sources": ["198.51.100.0/24"],
        "origins": ["Host web-1 ingress[0]"],
    }
    assert document["rendered"]["IpPermissions"][1]["FromPort"] == 443


def test_an_unknown_node_is_a_usage_error_naming_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["render", "nftables", SEED, "--node", "web-9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshwarden render: error: node 'web-9' has no Host document")
    assert err.rstrip().endswith("known nodes: docker-1, web-1")


def test_invalid_policies_render_nothing_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "host.yaml"
    bad.write_text(
        "apiVersion: meshwarden.io/v1alpha1\nkind: Host\nmetadata: {name: h}\n"
        "spec:\n  ingress: [{ports: [443]}]\n"
    )
    assert main(["render", "nftables", str(bad), "--node", "h"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{bad}:5:12: error: Host h would lock out its operators")


def test_dry_run_is_for_nftables_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "iptables", SEED, "--node", "web-1", "--dry-run"]) == 2
    assert "use it with nftables" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--interface", "docker0 -j ACCEPT\n-A INPUT"),  # a rule of its own in the restore file
        ("--interface", "a-name-longer-than-15"),
        ("--chain", "DOCKER USER"),
        ("--chain", "MESHWARDEN\n-F INPUT"),
    ],
)
def test_a_chain_or_interface_that_is_no_name_is_a_usage_error_not_part_of_the_rules(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["render", "iptables", SEED, "--node", "docker-1", "--chain", "DOCKER-USER"]
    with pytest.raises(SystemExit) as exited:
        main([*argv, flag, value])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"meshwarden render: error: {flag} {value!r}: not an")


def test_an_interface_wildcard_is_rendered_as_given(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["render", "iptables", SEED, "--node", "docker-1", "--chain", "DOCKER-USER"]
    assert main([*argv, "--interface", "br-+"]) == 0
    assert "-A DOCKER-USER -i br-+ -j RETURN" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("paths", "node", "code", "error"),
    [
        (["/nonexistent"], "web-1", 2, "/nonexistent: no such file or directory"),
        ([SEED], "nope", 2, "node 'nope' has no Host document"),
        (["/dev/null"], "web-1", 1, "the policies have 1 error(s); nothing rendered"),
    ],
)
def test_under_json_output_an_error_is_one_json_object_on_stdout(
    paths: list[str], node: str, code: int, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """render printed its errors on stderr only, so a script reading `-o json` got nothing."""
    assert main(["render", "nftables", *paths, "--node", node, "-o", "json"]) == code
    out, err = capsys.readouterr()
    reply = json.loads(out)
    assert reply["error"].startswith(error) and err == ""
    if code == 1:
        assert (
            reply["diagnostics"][0]["message"] == "cannot read file: a device, not a regular file"
        )
