"""The control plane's view of a policy directory: nothing in it raises out of a reload (each
hostile file is a rejected change, the last good mesh kept); a change is read only once it
settled; a change loosening the Mesh document is refused unless annotated."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from meshwarden import engine
from meshwarden._policies import Policies
from meshwarden._policy_files import SettledDirectory

MESH = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: mesh{annotations}}}
spec: {{trustDomain: {td}, mtls: {mtls}, defaultPolicy: {default}}}
"""
WORKLOADS = """\
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: backend-1, namespace: shop, labels: {app: backend}}
spec:
  addresses: [127.0.0.3]
  ports: [{port: 8080, protocol: http}]
"""
ALLOW_LOOSENING = ', annotations: {"meshwarden.io/allow-loosening": "true"}'


def mesh_text(
    td: str = "example.org", mtls: str = "STRICT", default: str = "deny", annotations: str = ""
) -> str:
    return MESH.format(td=td, mtls=mtls, default=default, annotations=annotations)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "mesh.yaml").write_text(mesh_text())
    (policies / "workloads.yaml").write_text(WORKLOADS)
    return policies


def loaded(directory: Path) -> Policies:
    policies = Policies(directory, report=io.StringIO(), settle=0)
    assert policies.reload_if_changed() is not None
    assert policies.status.healthy
    return policies


def denied_by_default(policies: Policies) -> bool:
    assert policies.mesh is not None
    request = engine.Request.build("shop/backend-1", 8080, identity="spiffe://example.org/x")
    return not engine.decide(policies.mesh.plan("shop/backend-1"), request).allowed


def assert_rejected_keeping(policies: Policies, version: str, *expected: str) -> None:
    assert policies.mesh is not None and policies.mesh.version == version
    assert not policies.status.healthy and policies.status.version == version
    text = "\n".join(policies.status.errors)
    for part in expected:
        assert part in text


HOSTILE = {
    "deep.yaml": "a: " + "[" * 800 + "]" * 800 + "\n",
    "alias.yaml": "a: &x [*x]\n",
    "digits.yaml": "a: " + "9" * 5000 + "\n",
    "latin1.yaml": b"a: \xff\xfe\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_file_is_a_rejected_change_naming_it(directory: Path, name: str) -> None:
    policies = loaded(directory)
    version = policies.status.version
    content = HOSTILE[name]
    path = directory / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert policies.reload_if_changed() is None
    assert_rejected_keeping(policies, version, str(path))
    assert denied_by_default(policies)


def test_a_huge_file_is_not_read_past_the_limit(directory: Path, monkeypatch) -> None:
    from meshwarden import _policy_files

    monkeypatch.setattr(_policy_files, "READ_LIMIT", 1000)
    policies = loaded(directory)
    version = policies.status.version
    (directory / "huge.yaml").write_bytes(b"#" * 5000)
    assert policies.reload_if_changed() is None
    assert_rejected_keeping(policies, version, "huge.yaml", "larger than 1,000 bytes")


def test_an_engine_that_raises_is_a_rejected_change(directory: Path, monkeypatch) -> None:
    policies = loaded(directory)
    version = policies.status.version

    def broken(*args: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(engine, "reload", broken)
    (directory / "mesh.yaml").write_text(mesh_text() + "# touched\n")
    assert policies.reload_if_changed() is None
    assert_rejected_keeping(policies, version, "internal error", "RecursionError")
    monkeypatch.setattr(engine, "parse_text", broken)
    (directory / "mesh.yaml").write_text(mesh_text() + "# touched again\n")
    assert policies.reload_if_changed() is None
    assert_rejected_keeping(policies, version, "mesh.yaml", "RecursionError")


def test_the_directory_removed_is_reported_once_and_recovers(directory: Path) -> None:
    policies = loaded(directory)
    version = policies.status.version
    saved = directory.with_name("saved")
    shutil.move(directory, saved)
    for _ in range(3):
        assert policies.reload_if_changed() is None
    assert_rejected_keeping(policies, version, "no such directory")
    assert policies.status.rejected == 1
    shutil.move(saved, directory)
    assert policies.reload_if_changed() is not None
    assert policies.status.healthy


def test_a_file_removed_between_listing_and_reading_is_not_an_error(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshwarden import _policy_files

    policies = loaded(directory)
    extra = directory / "extra.yaml"
    extra.write_text("# nothing\n")
    listed = _policy_files.fingerprint(directory)
    extra.unlink()
    monkeypatch.setattr(_policy_files, "fingerprint", lambda _: listed)
    assert policies.reload_if_changed() is None
    assert policies.status.healthy and policies.status.rejected == 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_change_is_read_only_after_its_stat_and_content_stayed_the_same(tmp_path: Path) -> None:
    clock = Clock()
    settled = SettledDirectory(tmp_path, settle=0.2, clock=clock)
    policy = tmp_path / "p.yaml"
    policy.write_text("kind: Mesh\n")
    assert settled.poll() is None  # just seen
    clock.now += 0.1
    policy.write_text("kind: Mesh\nmetadata: {name: m}\n")  # still being written
    assert settled.poll() is None
    clock.now += 0.25
    assert settled.poll() is None  # stat settled: content read once, to be confirmed
    clock.now += 0.25
    contents = settled.poll()
    assert contents is not None
    assert [f.content for f in contents.files] == [b"kind: Mesh\nmetadata: {name: m}\n"]
    clock.now += 1
    assert settled.poll() is None  # delivered once


def test_content_rewritten_with_the_same_size_and_mtime_is_read_again(tmp_path: Path) -> None:
    clock = Clock()
    settled = SettledDirectory(tmp_path, settle=0.2, clock=clock)
    policy = tmp_path / "p.yaml"
    policy.write_text("aaaa\n")
    stat = policy.stat()
    assert settled.poll() is None
    clock.now += 0.3
    assert settled.poll() is None  # read "aaaa"
    policy.write_text("bbbb\n")
    os.utime(policy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    clock.now += 0.3
    assert settled.poll() is None  # content differs from the first read: not settled
    clock.now += 0.3
    contents = settled.poll()
    assert contents is not None and contents.files[0].content == b"bbbb\n"


def test_removing_the_mesh_document_is_refused(directory: Path) -> None:
    policies = loaded(directory)
    version = policies.status.version
    (directory / "mesh.yaml").rename(directory / "mesh.yaml.bak")
    assert policies.reload_if_changed() is None
    assert_rejected_keeping(
        policies, version, "mesh.yaml:2:1: error: the Mesh document", "was removed"
    )
    assert denied_by_default(policies)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"default": "allow"}, "defaultPolicy would loosen from deny to allow"),
        ({"mtls": "PERMISSIVE"}, "mtls would loosen from STRICT to PERMISSIVE"),
    ],
)
def test_a_loosening_is_refused_unless_annotated(
    directory: Path, change: dict[str, str], message: str
) -> None:
    policies = loaded(directory)
    version = policies.status.version
    (directory / "mesh.yaml").write_text(mesh_text(**change))
    assert policies.reload_if_changed() is None
    assert_rejected_keeping(policies, version, "mesh.yaml:4:", message, "allow-loosening")
    (directory / "mesh.yaml").write_text(mesh_text(**change, annotations=ALLOW_LOOSENING))
    assert policies.reload_if_changed() is not None
    assert policies.status.healthy and policies.status.version != version


def test_a_trust_domain_change_is_refused_even_when_annotated(directory: Path) -> None:
    policies = loaded(directory)
    version = policies.status.version
    (directory / "mesh.yaml").write_text(mesh_text(td="other.org", annotations=ALLOW_LOOSENING))
    assert policies.reload_if_changed() is None
    assert_rejected_keeping(policies, version, "trustDomain would change", "restart")


def test_tightening_needs_no_annotation(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(mesh_text(mtls="PERMISSIVE", default="allow"))
    (tmp_path / "workloads.yaml").write_text(WORKLOADS)
    policies = loaded(tmp_path)
    (tmp_path / "mesh.yaml").write_text(mesh_text())
    assert policies.reload_if_changed() is not None
    assert policies.status.healthy and denied_by_default(policies)


def test_collection_stays_paused_until_the_last_pause_ends() -> None:
    import gc
    import threading

    from meshwarden._policies import collection_paused

    assert gc.isenabled()
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with collection_paused():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    with collection_paused():
        thread.start()
        assert inside.wait(10) and not gc.isenabled()
    assert not gc.isenabled()  # the other thread still compiles
    leave.set()
    thread.join(10)
    assert gc.isenabled()
