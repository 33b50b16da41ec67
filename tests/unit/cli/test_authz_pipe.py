"""The pipe between the control plane and an ext_authz worker: the worker parses sidecars'
requests from the network, so what it sends the control plane is read as JSON data — a pickle
written by a compromised worker is refused and runs nothing in the control plane."""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from pathlib import Path

from meshwarden._authz_pipe import Channel


class _Touch:
    """Unpickling this creates the file at `path` (what a hostile pickle could do instead)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.path),))


async def _exchange(raw: bytes | None) -> tuple[tuple[str, object], BaseException | None]:
    """A worker's channel sends a message to the control plane's; then `raw` bytes, as a
    hostile worker would, are read by the control plane's channel."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent = await Channel.open(ours, parent=True)
    worker = await Channel.open(theirs, parent=False)
    worker.send(("version", ("v1", ["an error"], 0.25)))
    first = await parent.receive()
    refused = None
    if raw is not None:
        worker.writer.write(struct.pack("!I", len(raw)) + raw)
        try:
            await parent.receive()
        except (ValueError, EOFError) as exc:
            refused = exc
    parent.close()
    worker.close()
    return first, refused


def test_a_workers_message_reaches_the_control_plane_as_data() -> None:
    first, _ = asyncio.run(_exchange(None))
    assert first == ("version", ["v1", ["an error"], 0.25])


def test_a_pickle_from_a_worker_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hostile = pickle.dumps(("version", _Touch(marker)))
    _, refused = asyncio.run(_exchange(hostile))
    assert isinstance(refused, ValueError)
    assert not marker.exists()
    pickle.loads(hostile)  # the same bytes do run code where read as a pickle
    assert marker.exists()


def test_the_control_plane_still_sends_what_json_cannot_carry() -> None:
    """Policy contents are dataclasses: the control plane's messages stay pickles."""

    async def roundtrip() -> tuple[str, object]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent = await Channel.open(ours, parent=True)
        worker = await Channel.open(theirs, parent=False)
        parent.send(("roots", b"-----BEGIN CERTIFICATE-----"))
        received = await worker.receive()
        parent.close()
        worker.close()
        return received

    assert asyncio.run(roundtrip()) == ("roots", b"-----BEGIN CERTIFICATE-----")
