"""What the control plane's scan of a policy directory finds is what `meshwarden check` finds:
a policy file it cannot use — a dangling link, a link loop, a FIFO named *.yaml, a directory
it may not list — is a rejected change naming it, never a file quietly left out. Left out, a
DENY policy stopped applying while /healthz said ok: the mesh failed open."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from meshwarden import engine
from meshwarden._policies import Policies
from meshwarden.cli import main

from .test_policy_reload import WORKLOADS, loaded, mesh_text

DENY_ADMIN = """\
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  selector: {matchLabels: {app: backend}}
  rules:
  - to: [{paths: ["/admin/*"]}]
"""


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """A mesh allowing by default, where only the DENY policy in deny/admin.yaml refuses."""
    policies = tmp_path / "policies"
    (policies / "deny").mkdir(parents=True)
    (policies / "mesh.yaml").write_text(mesh_text(default="allow"))
    (policies / "workloads.yaml").write_text(WORKLOADS)
    (policies / "deny" / "admin.yaml").write_text(DENY_ADMIN)
    return policies


def admin_denied(policies: Policies) -> bool:
    assert policies.mesh is not None
    request = engine.Request.build(
        "shop/backend-1", 8080, identity="spiffe://example.org/x", path="/admin/users"
    )
    return not engine.decide(policies.mesh.plan("shop/backend-1"), request).allowed


def _dangling_link(file: Path) -> None:
    file.unlink()
    file.symlink_to(file.with_name("moved-away.yaml"))


def _link_loop(file: Path) -> None:
    file.unlink()
    file.symlink_to(file)


def _fifo(file: Path) -> None:
    file.unlink()
    os.mkfifo(file)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_dangling_link, "No such file or directory"),
        (_link_loop, "Too many levels of symbolic links"),
        (_fifo, "a FIFO, not a regular file"),
    ],
    ids=["dangling link", "link loop", "FIFO"],
)
def test_a_policy_file_that_cannot_be_read_is_a_rejected_change_not_a_dropped_file(
    directory: Path, change: Callable[[Path], None], reason: str
) -> None:
    policies = loaded(directory)
    version = policies.status.version
    assert admin_denied(policies)
    file = directory / "deny" / "admin.yaml"
    change(file)
    assert main(["check", str(directory)]) == 1  # what `check` says of the same directory
    assert policies.reload_if_changed() is None
    assert policies.mesh is not None and policies.mesh.version == version
    assert not policies.status.healthy
    assert f"{file}:1:1: error: cannot read file: {reason}" in policies.status.errors[0]
    assert admin_denied(policies)  # the DENY policy still applies


# Run as uid 2001 (root may list any directory): a control plane's Policies on DIR, then DIR's
# subdirectory made unlistable, then one more reload; prints what it then serves.
AS_ANOTHER_USER = """
import io, os, sys
from pathlib import Path
from meshwarden import engine
from meshwarden._policies import Policies
directory = Path(sys.argv[1])
policies = Policies(directory, report=io.StringIO(), settle=0)
assert policies.reload_if_changed() is not None and policies.status.healthy
os.chmod(directory / "deny", 0)
policies.reload_if_changed()
request = engine.Request.build(
    "shop/backend-1", 8080, identity="spiffe://example.org/x", path="/admin/users"
)
print(engine.decide(policies.mesh.plan("shop/backend-1"), request).allowed)
print(policies.status.errors)
"""


def test_a_subdirectory_that_cannot_be_listed_is_a_rejected_change() -> None:
    top = Path(tempfile.mkdtemp(prefix="meshwarden-scan-", dir="/tmp"))  # uid 2001 gets in
    try:
        top.chmod(0o755)
        directory = top / "policies"
        (directory / "deny").mkdir(parents=True)
        (directory / "mesh.yaml").write_text(mesh_text(default="allow"))
        (directory / "workloads.yaml").write_text(WORKLOADS)
        (directory / "deny" / "admin.yaml").write_text(DENY_ADMIN)
        for path in (directory, *directory.rglob("*")):
            os.chown(path, 2001, 2001)
        user = ["setpriv", "--reuid=2001", "--regid=2001", "--clear-groups"]
        done = subprocess.run(
            [*user, sys.executable, "-c", AS_ANOTHER_USER, str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            check=False,
        )
    finally:
        shutil.rmtree(top)
    assert done.returncode == 0, done.stderr
    allowed, errors = done.stdout.splitlines()
    assert allowed == "False"  # the DENY policy still applies
    assert f"{directory / 'deny'}:1:1: error: cannot read directory: Permission denied" in errors
