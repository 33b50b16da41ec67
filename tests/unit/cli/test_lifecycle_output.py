"""A long-running command whose output goes away (`… | head` exited) stops what it started
before it exits 141 — whether writing `ready` fails or its work fails writing a line — and a
failure keeps its own exit status. (`up` noticing a closed pipe with nothing to write, with a
real `up` and its Envoys: tests/e2e/test_up_output_closed.py.)"""

from __future__ import annotations

import asyncio
import io

import pytest

from meshwarden._lifecycle import serve_until_signalled


class _Closed(io.StringIO):
    """An output whose reader went away."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


class _Command:
    def __init__(self, fails: BaseException | None = None) -> None:
        self.fails = fails
        self.stopped = 0

    async def start(self) -> str:
        return "serving"

    async def run(self) -> None:
        if self.fails is not None:
            raise self.fails
        await asyncio.sleep(3600)

    async def stop(self) -> None:
        self.stopped += 1


def _serve(command: _Command) -> int:
    return asyncio.run(serve_until_signalled(command.start, command.run, command.stop))


def test_a_ready_line_nobody_reads_stops_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout", _Closed())
    command = _Command()
    assert _serve(command) == 141
    assert command.stopped == 1


def test_work_that_finds_its_output_closed_stops_the_command() -> None:
    command = _Command(fails=BrokenPipeError(32, "Broken pipe"))
    assert _serve(command) == 141
    assert command.stopped == 1


def test_a_failure_keeps_its_status_when_its_report_cannot_be_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stderr", _Closed())
    command = _Command(fails=RuntimeError("the mesh broke"))
    assert _serve(command) == 1
    assert command.stopped == 1


def test_a_failure_while_running_stops_the_command_and_says_which_and_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    command = _Command(fails=RuntimeError("the mesh broke"))
    code = asyncio.run(
        serve_until_signalled(command.start, command.run, command.stop, "meshwarden server")
    )
    assert (code, command.stopped) == (1, 1)
    err = capsys.readouterr().err
    assert err == "meshwarden server: error: stopped: RuntimeError('the mesh broke')\n"
