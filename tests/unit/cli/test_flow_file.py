"""`--flow-log-file`: the flow log appended to a private NDJSON file, rotated by size."""

import io
import json
import os
import stat

import pytest
from meshwarden.xds import Flow, Verdict

from meshwarden._flow_file import FlowFile, problem
from meshwarden._flows import FlowLog, FlowQuery


def _flow(n: int) -> Flow:
    return Flow(
        1_700_000_000.0 + n,
        "shop/backend-1",
        8080,
        "spiffe://td/ns/shop/sa/frontend",
        "127.0.0.2",
        "http",
        "GET",
        f"/api/{n}",
        200,
        Verdict("allow", "shop/p", 0),
        None,
    )


def test_every_record_the_flow_log_gets_is_appended_as_one_json_line(tmp_path):
    path = tmp_path / "flows.ndjson"
    log = FlowLog(10, mirror=FlowFile(path))
    log.add([_flow(1), _flow(2)])
    log.add([_flow(3)])
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [_flow(n).to_json() for n in (1, 2, 3)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_file_rotates_by_size_keeping_a_bounded_number_of_old_files(tmp_path):
    path = tmp_path / "flows.ndjson"
    line = len(json.dumps(_flow(0).to_json(), separators=(",", ":"))) + 1
    sink = FlowFile(path, max_bytes=3 * line + 10, keep=2)
    for n in range(12):  # 3 records per file: 4 files' worth
        sink.add([_flow(n)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "flows.ndjson",
        "flows.ndjson.1",
        "flows.ndjson.2",
    ]
    paths_by_age = [tmp_path / "flows.ndjson.2", tmp_path / "flows.ndjson.1", path]
    kept = [json.loads(x)["path"] for p in paths_by_age for x in p.read_text().splitlines()]
    assert kept == [f"/api/{n}" for n in range(3, 12)]  # the oldest file was dropped
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in paths_by_age)


def test_a_symlink_or_a_file_others_can_read_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    os.chmod(target, 0o600)
    link = tmp_path / "flows.ndjson"
    link.symlink_to(target)
    assert "symbolic link" in problem(link)
    with pytest.raises(OSError):
        FlowFile(link)
    public = tmp_path / "public.ndjson"
    public.write_text("")
    os.chmod(public, 0o644)
    assert "readable by others" in problem(public)
    assert problem(tmp_path / "new.ndjson") == ""
    assert problem(tmp_path / "missing-dir" / "f") != ""


def test_a_write_error_is_reported_once_and_the_in_memory_log_carries_on(tmp_path):
    errors = io.StringIO()
    sink = FlowFile(tmp_path / "flows.ndjson", errors=errors)
    sink.close()
    sink._fd = 10_000  # no such descriptor: every write fails (as on a full or lost disk)
    log = FlowLog(10, mirror=sink)
    log.add([_flow(1)])
    log.add([_flow(2)])
    assert sink.failures == 2 and errors.getvalue().count("flow log file") == 1
    assert len(log.query(FlowQuery())) == 2
