"""`apply`, `history`, `diff` and `rollback` against a real etcd: every write is a revision,
invalid input writes nothing, racing applies never lose or merge a write."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from meshwarden._etcd import Etcd
from meshwarden._policy_store import ConcurrentApply, PolicyStore
from meshwarden.cli import main

from .._loopback import free_port
from .etcd_cluster import EtcdCluster

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(SHOP, target)
    return target


def _keys(etcd: EtcdCluster) -> list[bytes]:
    async def read() -> list[bytes]:
        client = Etcd(etcd.endpoints)
        try:
            found, _ = await client.get_prefix(b"/meshwarden/")
            return [kv.key for kv in found]
        finally:
            await client.close()

    return asyncio.run(read())


def _json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def _open_admin_paths(policies: Path) -> None:
    """A change to one policy: the frontend may also POST under /api/."""
    file = policies / "policies.yaml"
    file.write_text(file.read_text().replace("methods: [GET, HEAD]", "methods: [GET, HEAD, POST]"))


def test_apply_writes_revisions_history_lists_them_and_unchanged_input_writes_nothing(
    etcd, policies, capsys
):
    store = ["--store", etcd.url]
    assert main(["apply", str(policies), *store, "-m", "first", "-o", "json"]) == 0
    first = _json(capsys)
    assert first["changed"] and first["revision"] == 1 and first["files"] == 3
    assert main(["apply", str(policies), *store, "-o", "json"]) == 0
    assert _json(capsys) == {"changed": False}
    _open_admin_paths(policies)
    assert main(["apply", str(policies), *store, "-m", "frontend may POST"]) == 0
    assert capsys.readouterr().out.startswith("applied revision 2 ")
    assert main(["history", *store, "-o", "json"]) == 0
    history = _json(capsys)
    assert [(r["revision"], r["message"], r["current"]) for r in history] == [
        (1, "first", False),
        (2, "frontend may POST", True),
    ]
    assert all("@" in r["who"] and r["time"].endswith("+00:00") for r in history)
    assert history[0]["digest"] == first["digest"] != history[1]["digest"]


def test_invalid_policies_are_refused_with_file_line_col_and_nothing_is_written(
    etcd, policies, capsys
):
    assert main(["apply", str(policies), "--store", etcd.url]) == 0
    before = _keys(etcd)
    bad = policies / "workloads.yaml"
    bad.write_text(
        bad.read_text() + "\n---\napiVersion: meshwarden.io/v1alpha1\nkind: Mesh\n"
        "metadata: {name: m}\nspec: {mtls: LOOSE}\n"
    )
    capsys.readouterr()
    assert main(["apply", str(policies), "--store", etcd.url]) == 2
    err = capsys.readouterr().err
    lines = bad.read_text().count("\n")
    assert f"{bad}:{lines}:" in err and "LOOSE" in err
    assert "nothing was applied" in err
    assert _keys(etcd) == before


def test_a_change_that_loosens_the_mesh_is_refused_before_anything_is_written(
    etcd, policies, capsys
):
    assert main(["apply", str(policies), "--store", etcd.url]) == 0
    before = _keys(etcd)
    mesh = policies / "mesh.yaml"
    assert "defaultPolicy: deny" in mesh.read_text()
    mesh.write_text(mesh.read_text().replace("defaultPolicy: deny", "defaultPolicy: allow"))
    assert main(["apply", str(policies), "--store", etcd.url]) == 2
    assert "loosens the running Mesh" in capsys.readouterr().err
    assert _keys(etcd) == before


def test_racing_applies_land_one_at_a_time_and_the_losers_write_nothing(etcd, policies):
    """Twelve applies of different content start from the same head at once: each either lands
    as its own revision or is refused; history has no gap and no lost or merged write."""
    contents = [
        {
            "mesh.yaml": (SHOP / "mesh.yaml").read_bytes(),
            "policies.yaml": (SHOP / "policies.yaml").read_bytes(),
            "workloads.yaml": (SHOP / "workloads.yaml").read_bytes() + f"# {n}\n".encode(),
        }
        for n in range(12)
    ]

    async def race() -> tuple[list[object], list[object]]:
        clients = [Etcd(etcd.endpoints) for _ in contents]
        try:
            stores = [PolicyStore(c) for c in clients]
            await stores[0].apply(contents[0], "base", "test@host")
            results = await asyncio.gather(
                *(
                    s.apply(files, f"apply {n}", "test@host", expected_head=None)
                    for n, (s, files) in enumerate(zip(stores[1:], contents[1:], strict=True))
                ),
                return_exceptions=True,
            )
            return results, await stores[0].history()
        finally:
            for client in clients:
                await client.close()

    results, history = asyncio.run(race())
    landed = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, ConcurrentApply) for r in refused)
    assert refused, "twelve simultaneous applies from one head: some must lose the race"
    assert [r.revision for r in history] == list(range(1, len(landed) + 2))
    assert sorted(r.message for r in history[1:]) == sorted(r.message for r in landed)


def test_expect_revision_refuses_an_apply_on_top_of_someone_elses(etcd, policies, capsys):
    assert main(["apply", str(policies), "--store", etcd.url]) == 0
    _open_admin_paths(policies)
    assert main(["apply", str(policies), "--store", etcd.url, "--expect-revision", "0"]) == 1
    assert "refused: the store is at revision 1, not 0" in capsys.readouterr().err


def test_diff_names_documents_and_workloads_and_rollback_restores_the_files(etcd, policies, capsys):
    store = ["--store", etcd.url]
    assert main(["apply", str(policies), *store]) == 0
    _open_admin_paths(policies)
    assert main(["apply", str(policies), *store]) == 0
    capsys.readouterr()
    assert main(["diff", "1", *store, "-o", "json"]) == 0
    diff = _json(capsys)
    assert diff["from"] == 1 and diff["to"] == 2
    assert diff["documents"] == [
        {
            "change": "changed",
            "document": "AuthorizationPolicy shop/backend-access",
            "file": "policies.yaml",
        }
    ]
    assert diff["workloads"] == [{"change": "changed", "workload": "shop/backend-1"}]
    assert main(["rollback", "1", *store, "-o", "json"]) == 0
    rolled = _json(capsys)
    assert rolled["revision"] == 3 and rolled["rollbackOf"] == 1
    assert main(["history", *store, "-o", "json"]) == 0
    history = _json(capsys)
    assert history[2]["digest"] == history[0]["digest"] and history[2]["current"]
    assert main(["diff", "1", "3", *store, "-o", "json"]) == 0
    assert _json(capsys)["documents"] == []


def test_an_unknown_revision_and_an_unreachable_store_are_one_line_errors(etcd, capsys):
    assert main(["rollback", "7", "--store", etcd.url]) == 2
    assert capsys.readouterr().err.strip().endswith("revision 7 is not in the store")
    nobody = f"etcd://127.0.0.1:{free_port()}"
    assert main(["history", "--store", nobody, "--store-timeout", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"meshwarden history: error: {nobody}: etcd") and "\n" not in err


def test_a_policy_key_written_by_hand_with_garbage_is_a_one_line_error_naming_it(
    etcd, policies, capsys
):
    """`history`, `apply`, `diff` and `rollback` said `internal error: TypeError: list indices
    must be integers or slices, not str` for a revision record put by hand."""
    assert main(["apply", str(policies), "--store", etcd.url]) == 0

    async def put(key: bytes, value: bytes) -> None:
        client = Etcd(etcd.endpoints)
        try:
            await client.put(key, value)
        finally:
            await client.close()

    record, head = "/meshwarden/policy/rev/000000000001", "/meshwarden/policy/head"
    asyncio.run(put(record.encode(), b"[1, 2]"))
    capsys.readouterr()
    for command in (["history"], ["diff", "1"], ["rollback", "1"], ["apply", str(policies)]):
        assert main([*command, "--store", etcd.url]) == 1, command
        assert capsys.readouterr().err == (
            f"meshwarden {command[0]}: error: {etcd.url}: {record} in the store is not a "
            "policy revision record\n"
        )
    asyncio.run(put(head.encode(), b"garbage{"))
    assert main(["apply", str(policies), "--store", etcd.url]) == 1
    assert capsys.readouterr().err == (
        f"meshwarden apply: error: {etcd.url}: {head} in the store is not a policy head "
        '({"revision": N})\n'
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:2379", "starts with etcd://"),
        ("etcd://h1:2379,h2", "'h2' is not HOST:PORT"),
        ("etcd://", "no etcd member"),
    ],
)
def test_store_urls_are_checked_before_anything_runs(url, reason, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["history", "--store", url])
    assert stopped.value.code == 2
    assert reason in capsys.readouterr().err
