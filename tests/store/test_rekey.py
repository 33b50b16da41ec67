"""`meshwarden store rekey`: the store's sealed CA is re-sealed with a new key-encryption key in
one transaction, under running replicas that keep signing with the CA they hold and follow the
new key once it is in their KEK file; the old key opens nothing afterwards."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
from pathlib import Path

import pytest
from meshwarden.identities import ManualClock, StateError

from meshwarden._etcd import Etcd
from meshwarden._sealed import read_kek, seal, unseal
from meshwarden.cli import main

from .replicas import Replicas, replicas, start_plane
from .test_replicas import _check_every_svid_validates_everywhere, _tick

CA_KEY = b"/meshwarden/ca"


def _new_key(path: Path) -> bytes:
    key = os.urandom(32)
    path.write_text(base64.b64encode(key).decode() + "\n")
    path.chmod(0o600)
    return key


def _stored(endpoints: list[str], key: bytes = CA_KEY) -> bytes:
    async def read() -> bytes:
        etcd = Etcd(endpoints)
        try:
            found, _ = await etcd.get(key)
            assert found is not None
            return found.value
        finally:
            await etcd.close()

    return asyncio.run(read())


def _tick_all(group: Replicas) -> None:
    for plane in group.planes:
        group.loop.run(_tick(plane))


def test_rekey_under_running_replicas_keeps_svids_valid_and_the_old_kek_opens_nothing(
    etcd, tmp_path, capsys
):
    clock = ManualClock(dt.datetime.now(dt.UTC))
    with replicas(etcd, 2, clock=clock, run=False) as group:
        old = read_kek(group.kek)
        new_file = tmp_path / "new.kek"
        new = _new_key(new_file)
        argv = ["store", "rekey", "--store", etcd.url, "--kek-file", str(group.kek)]
        assert main([*argv, "--new-kek-file", str(new_file)]) == 0
        assert "re-sealed 1 value(s) (ca)" in capsys.readouterr().out
        with pytest.raises(StateError):
            unseal(old, CA_KEY, _stored(etcd.endpoints))
        unseal((new,), CA_KEY, _stored(etcd.endpoints))

        _tick_all(group)  # the replicas' file still holds the old key only
        for index in (0, 1):
            health = group.health(index)
            assert health["status"] == "degraded"
            assert "does not open with this --kek-file" in health["store"]["ca"]
        _check_every_svid_validates_everywhere(group, clock)  # the CA held keeps signing

        group.kek.write_text(group.kek.read_text() + new_file.read_text())  # old and new
        _tick_all(group)
        assert [group.health(i)["store"]["ca"] for i in (0, 1)] == ["ok", "ok"]
        third = start_plane(group.loop, etcd.url, new_file, tmp_path / "r2", clock, run=False)
        group.planes.append(third)  # started with the new key alone
        assert third.ca.bundle() == group.planes[0].ca.bundle()

        clock.advance(dt.timedelta(hours=12, minutes=1))  # a CA rotation step, after the rekey
        _tick_all(group)
        _tick_all(group)
        bundles = [p.ca.bundle() for p in group.planes]
        assert bundles[0] == bundles[1] == bundles[2] and len(bundles[0].x509_authorities) == 2
        unseal((new,), CA_KEY, _stored(etcd.endpoints))  # the step was sealed with the new key
        with pytest.raises(StateError):
            unseal(old, CA_KEY, _stored(etcd.endpoints))
        _check_every_svid_validates_everywhere(group, clock)
        old_file = tmp_path / "old.kek"
        old_file.write_text(base64.b64encode(old[0]).decode())
        old_file.chmod(0o600)
        with pytest.raises(StateError, match="does not open with this --kek-file"):
            start_plane(group.loop, etcd.url, old_file, tmp_path / "r3", clock)


def test_a_rekey_that_cannot_open_every_sealed_value_writes_nothing(etcd, tmp_path, capsys):
    with replicas(etcd, 1, run=False) as group:
        stranger = b"/meshwarden/other-secret"  # sealed with a key the --kek-file lacks
        asyncio.run(_put(etcd.endpoints, stranger, seal(os.urandom(32), stranger, b"x")))
        before = _stored(etcd.endpoints)
        new_file = tmp_path / "new.kek"
        _new_key(new_file)
        argv = ["store", "rekey", "--store", etcd.url, "--kek-file", str(group.kek)]
        assert main([*argv, "--new-kek-file", str(new_file), "-o", "json"]) == 1
        error = json.loads(capsys.readouterr().out)["error"]
        assert "other-secret" in error and "nothing was changed" in error
        assert _stored(etcd.endpoints) == before
        unseal(read_kek(group.kek), CA_KEY, before)


async def _put(endpoints: list[str], key: bytes, value: bytes) -> None:
    etcd = Etcd(endpoints)
    try:
        await etcd.put(key, value)
    finally:
        await etcd.close()


def test_rekey_twice_changes_nothing_the_second_time(etcd, tmp_path, capsys):
    with replicas(etcd, 1, run=False) as group:
        new_file = tmp_path / "new.kek"
        _new_key(new_file)
        argv = ["store", "rekey", "--store", etcd.url, "--kek-file", str(group.kek)]
        argv += ["--new-kek-file", str(new_file), "-o", "json"]
        assert main(argv) == 0
        first = json.loads(capsys.readouterr().out)
        assert first["rekeyed"] == ["ca"] and first["revision"] > 0
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out) == {
            "rekeyed": [],
            "already": ["ca"],
            "revision": 0,
        }


@pytest.mark.parametrize(
    ("new_text", "message"),
    [("same", "is the old one"), ("two", "give the new key alone"), ("bad", "base64 of 32")],
)
def test_a_bad_new_kek_file_is_an_input_error(tmp_path, capsys, new_text, message):
    old = tmp_path / "old.kek"
    _new_key(old)
    new_file = tmp_path / "new.kek"
    texts = {
        "same": old.read_text(),
        "two": old.read_text() + base64.b64encode(os.urandom(32)).decode(),
        "bad": "short\n",
    }
    new_file.write_text(texts[new_text])
    new_file.chmod(0o600)
    argv = ["store", "rekey", "--store", "etcd://127.0.0.1:1", "--kek-file", str(old)]
    code = main([*argv, "--new-kek-file", str(new_file), "--store-timeout", "0.5"])
    assert code == 2
    assert message in capsys.readouterr().err
