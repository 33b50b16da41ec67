"""A policy change is read as soon as the kernel says no policy file is open for writing
(inotify), and never while a writer still has one open; what the watch cannot see (a write
before it existed, a symlinked file's target elsewhere) waits for the timed settle."""

from __future__ import annotations

import asyncio
import gc
import os
import select
from pathlib import Path

import pytest

from meshwarden._policy_files import (
    WRITE_QUIET_MAX_SECONDS,
    WRITE_QUIET_SECONDS,
    SettledDirectory,
    quiet_window,
)
from meshwarden._policy_watch import written_or_timeout

from ...integration.harness import inotify_fds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watched(directory: Path) -> tuple[SettledDirectory, Clock]:
    """A settled directory whose watch is past its start-up blindness, everything delivered."""
    clock = Clock()
    settled = SettledDirectory(
        directory, settle=0.2, clock=clock, watch_writes=True, quiet=lambda: WRITE_QUIET_SECONDS
    )
    assert settled.wake_fd is not None, (
        "no inotify instance: this user's fs.inotify.max_user_instances are all in use "
        f"({len(inotify_fds())} by this process)"
    )
    for _ in range(4):
        settled.poll()
        clock.now += 0.3
    assert not settled.settling
    return settled, clock


def replace(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def test_a_file_replaced_in_one_step_is_read_once_its_writes_are_quiet(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("kind: Mesh\n")
    settled, clock = watched(tmp_path)
    replace(tmp_path / "p.yaml", "kind: Mesh\nmetadata: {name: m}\n")
    assert settled.poll() is None
    assert settled.ready_in == pytest.approx(WRITE_QUIET_SECONDS)  # not the 0.4 s settle
    clock.now += WRITE_QUIET_SECONDS
    contents = settled.poll()
    assert contents is not None
    assert [f.content for f in contents.files] == [b"kind: Mesh\nmetadata: {name: m}\n"]
    assert settled.poll() is None  # delivered once


def test_files_written_in_one_burst_are_read_together(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("a: 1\n")
    (tmp_path / "b.yaml").write_text("b: 1\n")
    settled, clock = watched(tmp_path)
    replace(tmp_path / "a.yaml", "a: 2\n")
    clock.now += WRITE_QUIET_SECONDS / 2
    assert settled.poll() is None
    replace(tmp_path / "b.yaml", "b: 2\n")
    clock.now += WRITE_QUIET_SECONDS / 2
    assert settled.poll() is None  # the second write restarted the quiet window
    clock.now += WRITE_QUIET_SECONDS
    contents = settled.poll()
    assert contents is not None
    assert [f.content for f in contents.files] == [b"a: 2\n", b"b: 2\n"]


def test_a_file_still_open_for_writing_is_not_read_until_its_writer_closes_it(
    tmp_path: Path,
) -> None:
    settled, clock = watched(tmp_path)
    with open(tmp_path / "p.yaml", "w") as writer:
        writer.write("kind: Me")
        writer.flush()
        assert settled.poll() is None
        clock.now += 0.05
        assert settled.poll() is None
        writer.write("sh\n")
        writer.flush()
        assert settled.poll() is None
    assert settled.poll() is None  # the close is seen now: its writes end now
    clock.now += WRITE_QUIET_SECONDS
    contents = settled.poll()
    assert contents is not None and contents.files[0].content == b"kind: Mesh\n"


def test_a_file_renamed_into_place_while_still_written_waits_for_the_close(
    tmp_path: Path,
) -> None:
    settled, clock = watched(tmp_path)
    temporary = tmp_path / ".p.yaml.tmp"
    with open(temporary, "w") as writer:
        writer.write("kind: ")
        writer.flush()
        os.replace(temporary, tmp_path / "p.yaml")
        clock.now += WRITE_QUIET_SECONDS
        assert settled.poll() is None
        writer.write("Mesh\n")
    assert settled.poll() is None
    clock.now += WRITE_QUIET_SECONDS
    contents = settled.poll()
    assert contents is not None and contents.files[0].content == b"kind: Mesh\n"


def test_a_file_in_a_new_subdirectory_is_read_only_after_the_settle_time(
    tmp_path: Path,
) -> None:
    settled, clock = watched(tmp_path)
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "p.yaml").write_text("kind: Mesh\n")  # before the watch could see it
    assert settled.poll() is None
    clock.now += 0.1
    assert settled.poll() is None
    clock.now += 0.15  # no write seen for the settle time since the watch was added
    contents = settled.poll()
    assert contents is not None and contents.files[0].content == b"kind: Mesh\n"


def test_a_change_the_watch_did_not_see_waits_for_the_timed_settle(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "p.yaml").write_text("kind: Mesh\n")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").symlink_to(outside / "p.yaml")
    settled, clock = watched(policies)
    (outside / "p.yaml").write_text("kind: Mesh\nmetadata: {name: m}\n")  # no event in policies/
    assert settled.poll() is None
    clock.now += 0.25
    assert settled.poll() is None
    clock.now += 0.25
    contents = settled.poll()
    assert contents is not None and contents.files[0].content.endswith(b"{name: m}\n")


def test_right_after_start_the_watch_is_not_trusted(tmp_path: Path) -> None:
    clock = Clock()
    settled = SettledDirectory(tmp_path, settle=0.2, clock=clock, watch_writes=True)
    settled.poll()  # opens the watch
    (tmp_path / "p.yaml").write_text("kind: Mesh\n")  # may have begun before the watch
    assert settled.poll() is None


def test_the_quiet_window_grows_with_the_run_queue_and_stays_bounded() -> None:
    # a core to spare: the short window; a writer waiting for busy cores: a longer one
    assert quiet_window(0.5, 2) == quiet_window(2.0, 2) == WRITE_QUIET_SECONDS
    assert WRITE_QUIET_SECONDS < quiet_window(5.0, 2) < WRITE_QUIET_MAX_SECONDS
    assert quiet_window(22.0, 2) == quiet_window(1000.0, 1) == WRITE_QUIET_MAX_SECONDS


def test_the_wake_descriptor_turns_readable_on_a_write_and_a_poll_empties_it(
    tmp_path: Path,
) -> None:
    settled, _ = watched(tmp_path)
    fd = settled.wake_fd
    assert fd is not None and not _readable(fd)
    (tmp_path / "notes.txt").write_text("not a policy file\n")  # no change to deliver
    assert _readable(fd)
    assert settled.poll() is None
    assert not _readable(fd)  # a poller waiting on it would not spin


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_the_control_plane_wakes_on_a_policy_write_instead_of_sleeping_out_its_timeout(
    tmp_path: Path,
) -> None:
    settled, _ = watched(tmp_path)

    async def wait_then_write() -> bool:
        waiting = asyncio.create_task(written_or_timeout(settled.wake_fd, timeout=3600))
        await asyncio.sleep(0)
        (tmp_path / "p.yaml").write_text("kind: Mesh\n")
        done, _ = await asyncio.wait({waiting}, timeout=60)  # bounded: a broken wake fails
        return waiting in done

    assert asyncio.run(wait_then_write())


def test_a_discarded_policy_directory_gives_its_inotify_instance_back(tmp_path: Path) -> None:
    """inotify instances are a per-user limit (128 by default): a control plane that reloads, or
    a process that opens many policy directories, must not leak them until it exits."""

    before = inotify_fds()
    settled, _ = watched(tmp_path)
    assert settled.wake_fd is not None and settled.wake_fd in inotify_fds() - before
    del settled
    gc.collect()
    assert inotify_fds() - before == set()
