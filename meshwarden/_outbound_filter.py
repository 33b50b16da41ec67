"""Outbound listeners serve only their workload: an nftables rule per `upstreams` entry refuses
connections to 127.0.0.1:localPort from a socket whose owner is not the workload's uid (from
its `unix:uid:N` selectors).

The sidecar's outbound listener presents the workload's SVID to the upstream, so whoever can
connect to it borrows that identity. Without a rule every local process can. The rules live in
`table inet meshwarden_outbound`, one output chain per `up` (named after its data directory),
replaced in one nftables transaction and left in place when `up` dies (the sidecars keep
serving, so the rules keep guarding them). Workloads without a uid selector cannot be guarded:
`up` names them. Pure functions build the rule set; `apply` runs `nft -f -`."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshwarden.engine import Workload

TABLE = "meshwarden_outbound"
UID_SELECTOR = "unix:uid:"


@dataclass(frozen=True)
class Guard:
    """Only `uids` may connect to 127.0.0.1:`port` (the outbound listener of `ref`)."""

    ref: str
    port: int
    uids: frozenset[int]


def workload_uids(workload: Workload) -> frozenset[int]:
    return frozenset(
        int(s.removeprefix(UID_SELECTOR))
        for s in workload.selectors
        if s.startswith(UID_SELECTOR) and s.removeprefix(UID_SELECTOR).isdigit()
    )


def guards(workloads: Iterable[Workload]) -> tuple[list[Guard], list[str]]:
    """(the guards of every outbound listener, the workloads with upstreams but no uid)."""
    found, unguarded = [], []
    for workload in workloads:
        upstreams = workload.spec.upstreams
        uids = workload_uids(workload)
        if upstreams and not uids:
            unguarded.append(workload.ref)
        found += [Guard(workload.ref, u.local_port, uids) for u in upstreams if uids]
    return sorted(found, key=lambda g: g.port), sorted(unguarded)


def chain_name(data_dir: Path) -> str:
    return "up_" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


def ruleset(chain: str, found: Iterable[Guard]) -> str:
    """An `nft -f` script replacing `chain` with one rule per guard: a SYN to the listener from
    a socket of any other uid is answered with a TCP reset."""
    lines = [
        f"add table inet {TABLE}",
        f"add chain inet {TABLE} {chain} {{ type filter hook output priority 0 ; "
        "policy accept ; }",
        f"flush chain inet {TABLE} {chain}",
    ]
    for guard in found:
        uids = ", ".join(str(u) for u in sorted(guard.uids))
        lines.append(
            f'add rule inet {TABLE} {chain} oifname "lo" ip daddr 127.0.0.1 '
            f"tcp dport {guard.port} tcp flags & (syn | ack) == syn "
            f'meta skuid != {{ {uids} }} reject with tcp reset comment "{guard.ref}"'
        )
    return "\n".join(lines) + "\n"


def _nft(script: str) -> str | None:
    """Run an nft script; the error (one line) or None."""
    binary = shutil.which("nft")
    if binary is None:
        return "the nft command is not installed (apt-get install nftables)"
    try:
        done = subprocess.run(
            [binary, "-f", "-"], input=script, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nft: {exc}"
    if done.returncode != 0:
        return "nft: " + " ".join(done.stderr.split())[:300]
    return None


def apply(chain: str, found: Iterable[Guard]) -> str | None:
    """Install the guards (one transaction); the reason when it failed, else None."""
    return _nft(ruleset(chain, found))


def remove(chain: str) -> None:
    """Drop this `up`'s chain (best effort: it may not exist)."""
    _nft(f"add table inet {TABLE}\ndelete chain inet {TABLE} {chain}\n")
