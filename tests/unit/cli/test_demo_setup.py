"""`meshwarden demo` from an installed package: the shop example is package data found through
importlib.resources (not a path relative to a source checkout), and the live demo moves its
apps and upstream listeners to ports that are free on this host."""

from __future__ import annotations

import contextlib
import fnmatch
import re
import resource
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from meshwarden.cli import main
from meshwarden.cli._demo import shipped_example
from meshwarden.demo import move_to_free_ports, reserve_port

ROOT = Path(__file__).resolve().parents[3]


def test_the_shop_example_is_package_data_the_wheel_carries() -> None:
    shop = shipped_example()
    assert sorted(p.name for p in shop.iterdir()) == sorted(
        p.name for p in (ROOT / "examples" / "shop").iterdir()
    )
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["meshwarden"]
    package = Path(str(shipped_example().parents[1]))
    for file in shop.iterdir():
        relative = file.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, glob) for glob in globs), relative


def test_offline_demo_runs_from_a_directory_without_examples(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshwarden", "demo", "--offline"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "all rows as expected" in done.stdout


def test_a_missing_examples_directory_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--offline", "--examples", "/nonexistent/shop"]) == 2
    assert capsys.readouterr().err == (
        "meshwarden demo: error: /nonexistent/shop: example directory not found\n"
    )


def test_the_demo_moves_its_ports_to_free_ones(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    shutil.copytree(shipped_example(), folder)
    with contextlib.ExitStack() as busy:
        for port in (15433, 18080):  # taken by another program (or already busy anyway)
            with contextlib.suppress(OSError):
                busy.enter_context(socket.create_server(("127.0.0.1", port)))
        moved = move_to_free_ports(folder)
        text = (folder / "workloads.yaml").read_text()
        used = [int(p) for p in re.findall(r"(?:targetPort|localPort): (\d+)", text)]
        assert sorted(moved) == [15080, 15081, 15432, 15433, 18080, 18081]
        assert sorted(used) == sorted(moved.values())
        for port in used:
            socket.create_server(("127.0.0.1", port)).close()  # free now
    assert main(["check", str(folder)]) == 0


def test_a_reserved_port_is_given_to_no_one_else_until_a_server_binds_it() -> None:
    """What keeps the demo's ports (and the tests') from being taken between choosing and
    binding: 5,000 sockets bound to port 0 at once get none of 100 reserved ports (a port
    merely bound and closed is handed out again: about 18 of 100 would be), and a server with
    SO_REUSEADDR, as every one of ours, binds each."""
    reserved = {reserve_port() for _ in range(100)}
    assert len(reserved) == 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 6000)), hard))
    try:
        with contextlib.ExitStack() as held:
            given = set()
            for _ in range(5000):
                s = held.enter_context(socket.socket())
                s.bind(("127.0.0.1", 0))
                given.add(s.getsockname()[1])
            assert not given & reserved
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    for port in reserved:
        socket.create_server(("127.0.0.1", port)).close()
