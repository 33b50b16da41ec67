"""Whoever may write the policy directory must not make meshwarden read another user's file and
quote it: a link is followed only to a file of the link's own owner, or when root owns the link
(`check` in CI, a control plane running as root, its /healthz and its console alike). The
console serves the bytes the running version was compiled from, never the disk as it is now.

The tests run as root (as the suite does): they give links and files other owners."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from meshwarden._console import Console, ConsoleOptions, ConsoleSources
from meshwarden._flows import FlowLog
from meshwarden._policies import Policies
from meshwarden.cli import main

SHOP = Path(__file__).resolve().parents[3] / "examples" / "shop"
NOBODY = 65534
SECRET = "hunter2-the-root-only-line"
# Root's file: a policy document, so that reading it would quote its lines in diagnostics.
ROOT_ONLY = (
    "apiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
    f"metadata: {{name: p, namespace: shop}}\nspec:\n  {SECRET}: 1\n"
)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    shutil.copytree(SHOP, tmp_path / "shop")
    secret = tmp_path / "secret.yaml"
    secret.write_text(ROOT_ONLY)
    os.chown(secret, 0, 0)
    secret.chmod(0o600)
    return tmp_path / "shop"


def _link(shop: Path, owner: int, target: Path | None = None) -> Path:
    link = shop / "planted.yaml"
    link.symlink_to(target or shop.parent / "secret.yaml")
    os.lchown(link, owner, owner)
    return link


def test_check_refuses_a_users_link_to_roots_file_and_quotes_none_of_it(
    shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = _link(shop, NOBODY)
    assert main(["check", str(shop)]) == 1
    out = capsys.readouterr()
    assert not [line for line in ROOT_ONLY.splitlines() if line in out.out + out.err]
    assert f"{link}:1:1: error: cannot read file: a link owned by uid {NOBODY}" in out.out
    assert "to a file owned by uid 0" in out.out and "copy the file" in out.out


def test_links_root_owns_and_links_to_their_owners_files_are_followed(
    shop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = _link(shop, 0)
    assert main(["check", str(shop)]) == 1
    assert f"unknown field 'spec.{SECRET}'" in capsys.readouterr().out  # read: root's link
    target = shop.parent / "secret.yaml"
    os.chown(target, NOBODY, NOBODY)
    os.lchown(link, NOBODY, NOBODY)
    assert main(["check", str(shop)]) == 1
    assert f"unknown field 'spec.{SECRET}'" in capsys.readouterr().out  # read: same owner
    target.write_text(ROOT_ONLY.replace(f"  {SECRET}: 1\n", "  action: DENY\n"))
    os.chown(target, NOBODY, NOBODY)
    assert main(["check", str(shop)]) == 0


def test_the_control_plane_rejects_the_change_keeps_its_policies_and_quotes_none_of_it(
    shop: Path,
) -> None:
    policies = Policies(shop, report=io.StringIO(), settle=0)
    policies.reload_if_changed()
    good = policies.status.version
    assert good is not None
    link = _link(shop, NOBODY)
    policies.reload_if_changed()
    status = policies.status
    assert status.version == good and policies.mesh is not None  # the last good set serves
    [error] = status.errors
    assert str(link) in error and f"a link owned by uid {NOBODY}" in error
    assert not [line for line in ROOT_ONLY.splitlines() if line in "".join(status.errors)]


def test_the_console_serves_the_compiled_bytes_not_a_file_swapped_since(shop: Path) -> None:
    policies = Policies(shop, report=io.StringIO(), settle=0)
    policies.reload_if_changed()
    served_file = shop / "policies.yaml"
    compiled = served_file.read_text()
    served_file.unlink()  # replaced by a link to root's file (refused: the last good set stays)
    served_file.symlink_to(shop.parent / "secret.yaml")
    os.lchown(served_file, NOBODY, NOBODY)
    policies.reload_if_changed()
    assert policies.status.errors  # the change was rejected...
    console = Console(ConsoleOptions(), ConsoleSources(policies, FlowLog(10), dict))
    view = console._policies_json()
    assert view["files"][str(served_file)] == compiled  # ...and the console shows what runs
    assert SECRET not in str(view)
