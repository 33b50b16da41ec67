"""Applying a node's nftables table: one `nft -f` transaction, the previous table kept on failure.

The renderer (meshwarden.render) makes the text; this module runs `nft`. `TableEnforcer` is what
the agent holds: it applies a table when its text changes and remembers the outcome, so a failed
apply is visible (health, metric, log) while the kernel keeps the last table that loaded.
"""

from __future__ import annotations

import difflib
import logging
import subprocess
from dataclasses import dataclass

from meshwarden.render import TABLE

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
            apply_table(text)
        except EnforceError as exc:
            self.error = f"nftables apply failed, previous table kept: {exc}"
            self.failures += 1
            log.error("%s", self.error)
            return False
        self.applied, self.error = text, None
        log.info("nftables table %s applied", TABLE)
        return True
