"""A stopping control plane closes the policy directory's watch (an inotify instance) while
a reload may still run in its worker thread (cancelling the task does not stop the thread):
closing waits for that reload, which finishes on an open watch — never reading a closed file
descriptor, whose number another file may hold by then."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from meshwarden._policies import Policies

from .test_policy_reload import WORKLOADS, mesh_text


def test_closing_waits_for_a_reload_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mesh.yaml").write_text(mesh_text())
    (tmp_path / "workloads.yaml").write_text(WORKLOADS)
    policies = Policies(tmp_path, report=io.StringIO(), settle=0)
    polling, release = threading.Event(), threading.Event()
    poll = policies._poll

    def held_poll() -> object:
        polling.set()
        release.wait(10)
        return poll()

    monkeypatch.setattr(policies, "_poll", held_poll)
    reload = threading.Thread(target=policies.reload_if_changed)
    reload.start()
    assert polling.wait(10)
    closing = threading.Thread(target=policies.close)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive()  # the watch stays open under the reload
    release.set()
    reload.join(10)
    closing.join(10)
    assert not closing.is_alive()
    assert policies.status.healthy and policies.status.errors == []
    assert policies.mesh is not None  # the reload read the directory through its watch
