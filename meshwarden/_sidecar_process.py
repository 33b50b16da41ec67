"""Envoy processes that outlive the `meshwarden up` that started them.

Envoy asks the kernel for SIGTERM when its parent dies (a parent-death signal relative to the
process that forked it). `up` therefore starts each Envoy through a short-lived launcher in a
session of its own: the launcher forks, exits, and only once Envoy's parent is no longer the
launcher does the child exec Envoy — so Envoy's parent is init (or a subreaper) and `kill -9`
of `up` leaves the sidecars serving their last configuration.

A detached Envoy is not our child: it is known by a `ProcessRecord` (pid, the kernel's start
time of that pid, the bootstrap it runs) saved beside its bootstrap, so a later `up` can find
and replace it, and a recycled pid is never mistaken for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Runs in a fresh interpreter (-I -S): fork; the parent prints the child's pid and exits; the
# child waits (bounded) until it has been re-parented, then becomes Envoy.
_LAUNCHER = """\
import os, sys, time
launcher = os.getpid()
child = os.fork()
if child:
    print(child, flush=True)
    os._exit(0)
os.dup2(2, 1)
deadline = time.monotonic() + 10
while os.getppid() == launcher and time.monotonic() < deadline:
    time.sleep(0.001)
os.execv(sys.argv[1], sys.argv[1:])
"""


@dataclass(frozen=True)
class ProcessRecord:
    """One running Envoy: `started` is field 22 of /proc/PID/stat (clock ticks after boot)."""

    pid: int
    started: int
    config: str

    def save(self, path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp")
        temporary.unlink(missing_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(temporary, flags, 0o600), "w") as out:
            json.dump(asdict(self), out)
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), int(data["started"]), str(data["config"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def alive(self) -> bool:
        """The process is still the one recorded, and not a zombie."""
        return start_time(self.pid) == self.started


def start_time(pid: int) -> int | None:
    """The kernel's start time of a live (non-zombie) `pid`, None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def spawn_detached(command: list[str], log: Path) -> ProcessRecord:
    """Start `command` (its first word an executable path) in a session of its own, re-parented
    away from this process; its output is appended to `log`."""
    with log.open("ab") as out:
        launched = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=out,
            start_new_session=True,
            timeout=30,
            check=True,
        )
    pid = int(launched.stdout)
    started = start_time(pid)
    if started is None:
        raise RuntimeError(f"{command[0]} exited at once; see {log}")
    config = command[command.index("-c") + 1] if "-c" in command else ""
    return ProcessRecord(pid, started, config)


def terminate(record: ProcessRecord, grace: float = 10.0) -> None:
    """SIGTERM the recorded process (if it still is that process), SIGKILL after `grace`."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not record.alive():
            return
        try:
            os.kill(record.pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while record.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
