"""Applying a node's nftables table: one `nft -f` transaction, the previous table kept on failure.

The renderer (meshwarden.render) makes the text; this module runs `nft`. `TableEnforcer` is what
the agent holds: it applies a table when its text changes and remembers the outcome, so a failed
apply is visible (health, metric, log) while the kernel keeps the last table that loaded.
"""

from __future__ import annotations

import difflib
import logging
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from meshwarden.engine import CompiledMesh
from meshwarden.render import TABLE, node_filter, render_nftables

log = logging.getLogger("meshwarden.enforce")
NFT_TIMEOUT = 30.0


class EnforceError(Exception):
    """`nft` refused a table or could not run; the message carries nft's own error."""


def _nft(args: list[str], text: str | None = None, netns: bool = False) -> str:
    command = ["nft", *args]
    if netns:  # a scratch network namespace: nothing the host has loaded is touched
        command = [
            "unshare",
            "--net",
            "--",
            "sh",
            "-c",
            'nft -f - && nft list table "$@"',
            "sh",
            *TABLE.split(),
        ]
    try:
        done = subprocess.run(
            command, input=text, capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnforceError(f"cannot run {command[0]}: {exc}") from None
    if done.returncode != 0:
        raise EnforceError(done.stderr.strip() or f"{command[0]} exited {done.returncode}")
    return done.stdout


def apply_table(text: str) -> None:
    """Load a rendered table atomically; on error the previous table stays in force."""
    _nft(["-f", "-"], text)


def loaded_table() -> str:
    """`nft list table inet meshwarden` as loaded now ('' when there is none)."""
    try:
        return _nft(["list", "table", *TABLE.split()])
    except EnforceError as exc:
        if "No such file or directory" in str(exc):
            return ""
        raise


def canonical(text: str) -> str:
    """How the kernel lists a rendered table, by loading it in a scratch network namespace."""
    return _nft([], text, netns=True)


def table_diff(text: str) -> str:
    """A unified diff from the loaded table to the rendered one ('' when they are the same)."""
    before, after = loaded_table(), canonical(text)
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        "loaded: " + TABLE,
        "rendered: " + TABLE,
    )
    return "".join(lines)


@dataclass
class TableEnforcer:
    """Keeps the node's table equal to the last rendered text; reports the last outcome."""

    applied: str | None = None
    error: str | None = None
    failures: int = 0

    @property
    def healthy(self) -> bool:
        return self.error is None

    def sync(self, text: str) -> bool:
        """Apply `text` if it differs from what was applied last. False when nft refused it
        (the previous table is still loaded; the error is kept for /healthz)."""
        if text == self.applied and self.error is None:
            return True
        try:
            if TABLE not in text:
                raise EnforceError(f"the server sent no {TABLE} table")
            apply_table(text)
        except EnforceError as exc:
            self.error = f"nftables apply failed, previous table kept: {exc}"
            self.failures += 1
            log.error("%s", self.error)
            return False
        self.applied, self.error = text, None
        log.info("nftables table %s applied", TABLE)
        return True

    def report(self) -> dict[str, object]:
        """What the agent's /healthz says of the packet filter (`healthy` false after a failed
        apply, with nft's error, until an apply succeeds)."""
        return {
            "table": TABLE,
            "healthy": self.healthy,
            "loaded": self.applied is not None,
            "error": self.error,
            "failures": self.failures,
        }


class PacketFilters:
    """The server side of `agent --enforce`: each node's table, rendered from the current mesh
    on the node API's Sync, remembered per mesh version (agents sync every few seconds)."""

    FORMATS = ("nftables",)

    def __init__(self, mesh: Callable[[], CompiledMesh | None]) -> None:
        self._mesh = mesh
        self._cache: dict[tuple[str, str], str] = {}

    def __call__(self, node: str, fmt: str) -> str:
        if fmt not in self.FORMATS:
            raise ValueError(f"packet filter format {fmt!r} is not supported; use nftables")
        mesh = self._mesh()
        if mesh is None:
            raise ValueError("no valid policy loaded yet")
        key = (mesh.version, node)
        text = self._cache.get(key)
        if text is None:
            self._cache = {k: v for k, v in self._cache.items() if k[0] == mesh.version}
            text = self._cache[key] = render_nftables(node_filter(mesh, node))
        return text


def observe(enforcer: TableEnforcer) -> None:
    """Metrics of the agent's enforcement: 1/0 whether the last apply succeeded, and failures."""
    meter = metrics.get_meter("meshwarden.agent")

    def healthy(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1 if enforcer.healthy else 0, {"table": TABLE})]

    def failures(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(enforcer.failures, {"table": TABLE})]

    meter.create_observable_gauge(
        "meshwarden.enforce.healthy",
        callbacks=[healthy],
        description="1 when the node's table matches the policies",
    )
    meter.create_observable_counter(
        "meshwarden.enforce.failures",
        callbacks=[failures],
        description="applies nft refused (previous table kept)",
    )
