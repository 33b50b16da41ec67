"""A running control plane keeps serving while a policy change compiles and while its
snapshots are built: /healthz answers while each is known to be in progress (held, burning CPU,
until the test has its answer); a snapshot that cannot be built is reported, not fatal."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshwarden import engine
from meshwarden._server import ControlPlane

from .harness import inotify_fds
from .test_node_attestation import POLICIES, running_plane

ADDED = """
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: late, namespace: shop}
spec: {selectors: ["unix:uid:0"]}
"""


def healthz(plane: ControlPlane) -> dict[str, Any]:
    assert plane.health is not None
    conn = http.client.HTTPConnection(plane.health.host, plane.health.port, timeout=5)
    conn.request("GET", "/healthz")
    return dict(json.loads(conn.getresponse().read()))


def held(
    real: Callable[..., Any], started: threading.Event, release: threading.Event
) -> Callable[..., Any]:
    """`real` made to burn CPU first (holding the GIL as a real compile does, between the
    interpreter's switches) until released."""

    def call(*args: Any) -> Any:
        started.set()
        deadline = time.monotonic() + 30
        while not release.is_set() and time.monotonic() < deadline:
            sum(range(10_000))
        return real(*args)

    return call


@contextlib.contextmanager
def change_held_in(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    owner: Callable[[ControlPlane], object],
    name: str,
    done: Callable[[ControlPlane], bool],
) -> Iterator[tuple[ControlPlane, str]]:
    """A running control plane (`run` on its loop) given a change (a Workload added) whose
    `owner(plane).name` call is held until the block ends: yields (plane, version before); then
    waits until `done(plane)`."""
    started, release = threading.Event(), threading.Event()
    with running_plane(tmp_path, health="127.0.0.1:0") as running:
        plane = running.plane
        before = healthz(plane)["policyVersion"]
        target = owner(plane)
        monkeypatch.setattr(target, name, held(getattr(target, name), started, release))
        running.loop.call(lambda: asyncio.ensure_future(plane.run()))  # cancelled at close
        try:
            (tmp_path / "policies" / "mesh.yaml").write_text(POLICIES + ADDED)
            assert started.wait(20), f"{name} was never called"
            yield plane, before
        finally:
            release.set()
        deadline = time.monotonic() + 20
        while not done(plane) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done(plane)


def test_healthz_answers_while_a_reload_is_compiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def applied(plane: ControlPlane) -> bool:
        registry = plane.policies.registry
        return registry is not None and "shop/late" in registry.workloads

    with change_held_in(tmp_path, monkeypatch, lambda plane: engine, "reload", applied) as (
        plane,
        before,
    ):
        during = healthz(plane)  # the compile is held: this answer comes from the loop
        assert during["reload"]["state"] == "compiling"
        assert during["policyVersion"] == before and during["status"] == "ok"
    assert plane.policies.status.version != before and plane.policies.reloading_since is None


def test_healthz_answers_while_snapshots_are_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def served(plane: ControlPlane) -> bool:
        return "shop/late" in plane.xds.cache.nodes()

    with change_held_in(
        tmp_path, monkeypatch, lambda plane: plane.xds.builder, "snapshot", served
    ) as (plane, before):
        during = healthz(plane)  # compiled; its snapshots are held in the build
        assert during["policyVersion"] != before and during["status"] == "ok"
        assert not served(plane)


def test_a_stopped_control_plane_gives_its_inotify_instance_back(tmp_path: Path) -> None:
    """inotify instances are a per-user limit (128 by default) shared by every process of the
    user: a control plane stopped in a process that goes on (a test run, a program embedding
    it) must not keep its policy watch until the garbage collector finds the plane."""
    before = inotify_fds()
    with running_plane(tmp_path) as running:
        assert running.plane.policies.wake_fd in inotify_fds() - before
    assert running.plane is not None  # still referenced: only `stop` could give it back
    assert inotify_fds() - before == set()
