"""The command line as a user meets it: every sub-command's --help (each flag explained, with an
example), --version, shell completion, and errors that are one line with the documented exit
code — never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from meshwarden.cli import build_parser, main, subcommand_parsers

from ..._loopback import free_port

ROOT = Path(__file__).resolve().parents[3]
SHOP = str(ROOT / "examples" / "shop")
MESHWARDEN = [sys.executable, "-m", "meshwarden"]
COMMANDS = [sub.prog.split()[1:] for sub in subcommand_parsers(build_parser())]


def _one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line, got {text!r}"
    return lines[0]


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_help_explains_every_flag_and_shows_an_example(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    parser = next(s for s in subcommand_parsers(build_parser()) if s.prog.split()[1:] == command)
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for action in _flags(parser):
        assert action.help, f"meshwarden {' '.join(command)} {action.option_strings[0]}: no help"
        for name in action.option_strings:
            assert name in text
    leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    if leaf:
        assert "example" in text, f"meshwarden {' '.join(command)} --help has no example"


def test_help_shows_defaults_of_flags_that_have_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    assert "(default: text)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["token", "create", "--help"])
    assert "(default: 10m)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("command", "flag", "says"),
    [
        ("explain", "--from", "default: none, a plaintext peer"),
        ("explain", "--source-ip", "default: --from-workload's first address"),
        ("agent", "--server-bundle", "needed with the join token to attest"),
        ("verify", "--expect", "default: one probe per upstream"),
    ],
)
def test_a_flag_whose_default_is_no_value_says_what_that_means(
    command: str, flag: str, says: str
) -> None:
    """`--source-ip  direct peer address` and `--server-bundle  PEM or SPIFFE JSON` left out
    what happens without them (the explain peer is plaintext; the agent needs the bundle only
    to attest)."""
    parser = next(s for s in subcommand_parsers(build_parser()) if s.prog.split()[1:] == [command])
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    assert says in " ".join(str(action.help).split())


def test_help_and_version_print_no_third_party_warnings() -> None:
    help_ = subprocess.run([*MESHWARDEN, "--help"], capture_output=True, text=True, check=True)
    assert help_.stderr == ""  # e.g. cryptography's DSA deprecation warning via py-spiffe
    for command in COMMANDS:
        assert command[0] in help_.stdout
    shown = subprocess.run([*MESHWARDEN, "--version"], capture_output=True, text=True, check=True)
    assert shown.stdout == f"meshwarden {version('meshwarden')}\n"
    assert shown.stderr == ""


def _bash_complete(script: str, words: list[str]) -> list[str]:
    """What bash offers when the line so far is `words` (the last one being completed)."""
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
        '_meshwarden; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_bash_completion_is_valid_and_completes_commands_flags_and_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    top = _bash_complete(script, ["meshwarden", ""])
    assert {c[0] for c in COMMANDS} <= set(top)
    assert _bash_complete(script, ["meshwarden", "ch"]) == ["check"]
    assert _bash_complete(script, ["meshwarden", "check", "-o", ""]) == ["text", "json"]
    assert _bash_complete(script, ["meshwarden", "token", ""]) == ["create"]
    assert "--ttl" in _bash_complete(script, ["meshwarden", "token", "create", "--t"])


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_name_every_command_and_flag(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for sub in subcommand_parsers(build_parser()):
        assert sub.prog.split()[-1] in script
        for action in _flags(sub):
            assert action.option_strings[-1].lstrip("-") in script
    assert ("compdef _meshwarden meshwarden" if shell == "zsh" else "complete -c meshwarden") in (
        script
    )


def test_usage_errors_are_one_line_exit_2_with_a_suggestion() -> None:
    done = subprocess.run([*MESHWARDEN, "chek", SHOP], capture_output=True, text=True)
    assert done.returncode == 2
    assert _one_line(done.stderr).startswith("meshwarden: error: ")
    assert "did you mean 'check'?" in done.stderr
    done = subprocess.run([*MESHWARDEN, "flows", "--since", "soon"], capture_output=True, text=True)
    assert done.returncode == 2
    assert _one_line(done.stderr).startswith("meshwarden flows: error: --since 'soon': expected")


def test_input_errors_name_the_command_or_answer_in_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["explain", SHOP, "--to", "shop/nope", "--port", "8080"]) == 2
    captured = capsys.readouterr()
    assert _one_line(captured.err).startswith("meshwarden explain: error: --to shop/nope: no such")
    assert main(["explain", SHOP, "--to", "shop/backend", "--port", "8080"]) == 2
    assert "no such workload; did you mean 'shop/backend-1'?" in capsys.readouterr().err
    assert captured.out == ""
    assert main(["explain", SHOP, "--to", "shop/nope", "--port", "8080", "-o", "json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(_one_line(captured.out))["error"].startswith("--to shop/nope: no such")
    assert captured.err == ""


def test_an_internal_error_in_explain_or_check_is_one_line_and_exit_2_not_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import meshwarden.cli._check as check_command
    import meshwarden.cli._explain as explain_command

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(explain_command, "request_path", broken)
    argv = ["explain", SHOP, "--to", "shop/backend-1", "--port", "8080"]
    assert main(argv) == 2  # 1 would read as "denied"
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("meshwarden explain: error: internal error: RuntimeError: a bug")
    monkeypatch.setattr(check_command, "load_or_raise", broken)
    assert main(["check", SHOP]) == 2  # 1 would read as "invalid"
    assert _one_line(capsys.readouterr().err).startswith("meshwarden check: error: internal")


@pytest.mark.parametrize("argv", [["completion", "bash"], ["check", SHOP, "-o", "json"]])
def test_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    """As when piped into `head`, which exits and closes the pipe before the command writes."""
    child = subprocess.Popen(
        [*MESHWARDEN, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # the reader is gone before the first write (the import takes longer)
    assert child.wait(timeout=60) == 141  # as for a process killed by SIGPIPE
    assert child.stderr.read() == ""
    child.stderr.close()


def test_a_missing_output_directory_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bootstrap",
        "--workload",
        "shop/backend-1",
        "--server",
        "127.0.0.1:8443",
        "--trust-domain",
        "example.org",
    ]
    target = "/nonexistent-dir/bootstrap.json"
    assert main([*argv, "--sds-socket", "/tmp/sds.sock", "--output-file", target]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == f"meshwarden bootstrap: error: --output-file {target}: No such file or directory"


def _bundle_dir(tmp_path: Path) -> str:
    from meshwarden.engine import TrustDomain
    from meshwarden.identities import CaConfig, CertificateAuthority, SystemClock

    ca = CertificateAuthority(CaConfig(TrustDomain("example.org")), SystemClock())
    (tmp_path / "bundle.json").write_text(ca.bundle().to_spiffe_json())
    return str(tmp_path)


BOOTSTRAP = "bootstrap --workload shop/backend-1 --server 127.0.0.1:8443 --sds-socket /tmp/s"
TESTS = ROOT / "tests" / "unit" / "cli" / "fixtures" / "policy_tests" / "shop_tests.yaml"


@pytest.mark.parametrize(
    ("argv", "flag", "written"),
    [
        ([*BOOTSTRAP.split(), "--trust-domain", "example.org"], "--output-file", b'"node"'),
        (["ca", "bundle", "--data-dir", "BUNDLE_DIR"], "--output-file", b"BEGIN CERTIFICATE"),
        (["test", str(TESTS), SHOP], "--junit", b"<testsuites"),
    ],
    ids=["bootstrap", "ca bundle", "test --junit"],
)
def test_a_file_a_command_writes_replaces_a_planted_symlink_instead_of_following_it(
    argv: list[str], flag: str, written: bytes, tmp_path: Path
) -> None:
    """Writing through a link let whoever could create FILE (a shared directory) make the
    command, run as root, overwrite any file the link names (render already did this right)."""
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    link = tmp_path / "out"
    link.symlink_to(victim)
    argv = [_bundle_dir(tmp_path) if a == "BUNDLE_DIR" else a for a in argv]
    assert main([*argv, flag, str(link)]) in (0, 1)  # shop_tests.yaml has a failing case
    assert victim.read_text() == "keep me\n"
    assert not link.is_symlink() and written in link.read_bytes()
    assert link.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("argv", [["demo"], ["up", SHOP]], ids=["demo", "up"])
def test_a_bad_envoy_bin_is_one_line_before_anything_starts(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ENVOY_BIN", "/nonexistent/envoy")
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"meshwarden {argv[0]}: error: ENVOY_BIN=/nonexistent/envoy: not an")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["demo", "--metrics"],
            "meshwarden demo: error: --metrics 127.0.0.1:{port}: cannot listen",
        ),
        (["up", SHOP, "--health"], "meshwarden up: error: error while attempting to bind on"),
    ],
    ids=["demo", "up"],
)
def test_a_port_in_use_is_one_line_and_exit_2(argv: list[str], expected: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": ""}
        done = subprocess.run(
            [*MESHWARDEN, *argv, f"127.0.0.1:{port}"], capture_output=True, text=True, env=env
        )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(expected.format(port=port)), done.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_missing_an_argument_or_given_a_wrong_flag_is_one_usage_line(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    parser = next(s for s in subcommand_parsers(build_parser()) if s.prog.split()[1:] == command)
    required = [a for a in parser._actions if a.required]
    # Leave out what is required; where nothing is (demo, flows), pass a flag that does not exist.
    argv = command if required else [*command, "--no-such-flag"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"{parser.prog}: error: ")
    assert line.endswith(f"(see '{parser.prog} --help')")


def test_identity_commands_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "create", "--data-dir", str(tmp_path), "--node", "n1"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(
        f"meshwarden token create: error: no server running with --data-dir {tmp_path}"
    )
    assert main(["ca", "bundle", "--data-dir", str(tmp_path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"meshwarden ca bundle: error: {tmp_path}/")
    assert line.endswith("(has `meshwarden server` run with this data dir?)")


@pytest.mark.parametrize("argv", [["status"], ["status", "-o", "json"], ["verify"]])
def test_a_control_plane_that_does_not_answer_is_one_error_and_no_report(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` printed its empty table and `0 SYNCED, 0 STALE, 0 NACK, 0 PROBLEM` (a summary a
    script could read as all well) before the error; `verify` said `[Errno 111]`."""
    server = f"127.0.0.1:{free_port()}"
    assert main([*argv, "--server", server]) == 1
    out, err = capsys.readouterr()
    flag = "--server " if argv[0] == "verify" else ""
    if "json" in argv:
        assert (json.loads(out), err) == ({"error": f"{server}: Connection refused"}, "")
    else:
        assert out == ""
        assert err == f"meshwarden {argv[0]}: error: {flag}{server}: Connection refused\n"


def test_top_level_help_lists_every_command_with_the_summary_its_own_parser_gives() -> None:
    # `meshwarden --help` is built from a table of summaries, without importing the commands.
    assert build_parser("listing").format_help() == build_parser().format_help()


def test_top_level_help_and_a_mistyped_command_import_neither_grpc_nor_envoy_types() -> None:
    probe = (
        "import sys\n"
        "from meshwarden.cli import main\n"
        "for argv in (['--help'], ['chek']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('grpc', 'meshwarden.xds', 'meshwarden.engine', 'envoy_data_plane')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print('heavy:' + ','.join(heavy), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    heavy = out.stderr.strip().splitlines()[-1]
    assert "COMMAND" in out.stdout
    assert heavy == "heavy:", (
        f"the top-level help imported {heavy}: give each new command its summary in "
        "_SUMMARIES (meshwarden/cli/__init__.py)"
    )
