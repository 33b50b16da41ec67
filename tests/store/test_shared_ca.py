"""The key-encryption key guards the CA in the store: a replica with another key (or an unsafe
key file) does not start, and etcd never holds a private key in the clear."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from meshwarden.identities import StateError, SystemClock

from meshwarden._etcd import Etcd
from meshwarden._shared_ca import read_kek
from meshwarden.cli import main

from ..integration.harness import LoopThread
from .replicas import replicas, start_plane, write_kek


def _all_values(endpoints: list[str]) -> bytes:
    async def read() -> bytes:
        etcd = Etcd(endpoints)
        try:
            found, _ = await etcd.get_prefix(b"/meshwarden/")
            return b"\n".join(kv.value for kv in found)
        finally:
            await etcd.close()

    return asyncio.run(read())


def test_etcd_holds_no_private_key_in_the_clear_and_another_kek_cannot_open_the_ca(etcd, tmp_path):
    with replicas(etcd, 1) as group:
        stored = _all_values(etcd.endpoints)
        assert b"PRIVATE KEY" not in stored and b"A256GCM" in stored
        other = tmp_path / "other"
        other.mkdir()
        loop = LoopThread()
        try:
            with pytest.raises(StateError, match="does not open with this --kek-file"):
                start_plane(loop, etcd.url, write_kek(other), other / "data", SystemClock())
        finally:
            loop.close()
        assert group.health(0)["status"] == "ok"


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [
        (base64.b64encode(bytes(range(32))), 0o644, "readable by its owner only"),
        (base64.b64encode(bytes(range(16))), 0o600, "base64 of 32 bytes"),
        (b"not base64 at all!", 0o600, "base64 of 32 bytes"),
    ],
    ids=["group-readable", "16-bytes", "not-base64"],
)
def test_an_unsafe_or_malformed_kek_file_is_refused(tmp_path: Path, content, mode, problem):
    path = tmp_path / "kek"
    path.write_bytes(content)
    path.chmod(mode)
    with pytest.raises(StateError, match=problem):
        read_kek(path)


def test_a_kek_file_that_is_a_symlink_is_refused(tmp_path: Path):
    target = write_kek(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(StateError, match="cannot read the key-encryption key"):
        read_kek(link)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--store", "etcd://127.0.0.1:2379"], "--store needs --kek-file"),
        (["DIR", "--store", "etcd://127.0.0.1:2379", "--kek-file", "k"], "not both"),
        (["DIR", "--kek-file", "k"], "--kek-file goes with --store"),
    ],
)
def test_server_store_flags_are_checked_before_anything_starts(tmp_path, capsys, extra, message):
    argv = ["server", "--data-dir", str(tmp_path), *extra]
    assert main([str(tmp_path) if a == "DIR" else a for a in argv]) == 2
    assert message in capsys.readouterr().err
