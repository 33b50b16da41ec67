"""Flow records for `lint`, `recommend` and `promote`: from NDJSON files (`--flows`, as
`meshwarden flows -o json --follow` and `--flow-log-file` write them) or a live control plane
(`--server`, its in-memory flow log)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable
from typing import Any

from meshwarden.cli._common import CommandFailed, InputError
from meshwarden.cli._flows import _connect
from meshwarden.cli._types import duration


def add_arguments(parser: Any, since_default: str | None = None) -> None:
    parser.add_argument(
        "--flows",
        action="append",
        default=[],
        metavar="FILE",
        help="NDJSON flow records (repeat for rotated files: FILE.1 ...)",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help="the control plane's health URL: read its in-memory flow log",
    )
    parser.add_argument(
        "--since",
        type=duration,
        default=since_default,
        metavar="DURATION",
        help="only flows of the last DURATION (30m, 24h, 7d)"
        + (f"; default {since_default}" if since_default else ""),
    )


def read_flows(
    files: Iterable[str], server: str | None, window: float | None, now: float | None = None
) -> list[dict[str, Any]]:
    """The flow records of the last `window` seconds (None: all), oldest first; InputError
    names a bad file line, CommandFailed a server that does not answer."""
    cutoff = None if window is None else (now or time.time()) - window
    flows: list[dict[str, Any]] = []
    for file in files:
        flows.extend(_from_file(file))
    if server:
        flows.extend(_from_server(server, window))
    kept = [f for f in flows if cutoff is None or _epoch(f) >= cutoff]
    return sorted(kept, key=_epoch)


def _from_file(file: str) -> list[dict[str, Any]]:
    try:
        stream = open(file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"--flows {file}: {exc.strerror or exc}") from None
    flows = []
    with stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{file}:{number}: not a JSON flow record: {exc.msg}") from None
            if not isinstance(record, dict) or not {"time", "workload", "port"} <= set(record):
                raise InputError(f"{file}:{number}: a flow record needs time, workload, port")
            flows.append(record)
    return flows


def _from_server(server: str, window: float | None) -> list[dict[str, Any]]:
    params = {} if window is None else {"since": str(window)}
    try:
        response = _connect(server, params)
        body = response.read()
    except OSError as exc:
        raise CommandFailed(f"--server {server}: {exc}") from None
    if response.status != 200:
        raise CommandFailed(f"--server {server}: {response.status} {body.decode(errors='replace')}")
    flows: list[dict[str, Any]] = json.loads(body)["flows"]
    return flows


def _epoch(flow: dict[str, Any]) -> float:
    value = flow.get("time")
    if isinstance(value, int | float):
        return float(value)
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
