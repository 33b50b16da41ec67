"""Control-plane replicas on one etcd store, run in a background event loop: the same
`ControlPlane` as `meshwarden server --store`, with ports picked by the system."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshwarden.identities import Clock, SystemClock

from meshwarden._etcd import Etcd, StoreUrl
from meshwarden._policy_store import PolicyStore
from meshwarden._server import ControlPlane, ServerOptions

from ..integration.harness import LoopThread, wait_for
from .etcd_cluster import EtcdCluster

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"


def shop_files(extra: str = "") -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(SHOP.glob("*.yaml"))}
    files["policies.yaml"] += extra.encode()
    return files


def write_kek(directory: Path) -> Path:
    path = directory / "kek"
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    return path


@dataclass
class Replicas:
    loop: LoopThread
    etcd: EtcdCluster
    planes: list[ControlPlane]
    kek: Path
    root: Path

    def apply(self, files: dict[str, bytes], message: str = "") -> int:
        async def write() -> int:
            client = Etcd(self.etcd.endpoints, timeout=15)
            try:
                record = await PolicyStore(client).apply(files, message, "test@host")
                assert record is not None
                return record.revision
            finally:
                await client.close()

        return self.loop.run(write(), timeout=30)

    def health(self, index: int) -> dict[str, Any]:
        plane = self.planes[index]
        return self.loop.call(plane._health)

    def wait_served(self, revision: int, before: str = "", timeout: float = 30) -> str:
        """Wait until every replica took `revision` and compiled it to a version other than
        `before`; that version."""
        wait_for(
            lambda: all(
                p.replica is not None
                and p.replica.source.delivered == revision
                and p.policies.status.version not in ("", before)
                for p in self.planes
            ),
            timeout,
        )
        versions = {p.policies.status.version for p in self.planes}
        assert len(versions) == 1, f"replicas compiled revision {revision} differently"
        return versions.pop()


def start_plane(
    loop: LoopThread, url: str, kek: Path, data_dir: Path, clock: Clock, run: bool = True
) -> ControlPlane:
    data_dir.mkdir(mode=0o700)
    options = ServerOptions(
        policies=None,
        data_dir=data_dir,
        listen="127.0.0.1:0",
        health=None,
        store=StoreUrl.parse(url),
        kek_file=kek,
    )
    plane = ControlPlane(options, clock)
    loop.run(plane.start(), timeout=30)
    if run:
        asyncio.run_coroutine_threadsafe(plane.run(), loop.loop)
    return plane


@contextmanager
def replicas(
    etcd: EtcdCluster,
    count: int,
    clock: Clock | None = None,
    run: bool = True,
    files: dict[str, bytes] | None = None,
) -> Iterator[Replicas]:
    """`count` replicas on the store, which is given the shop example first."""
    root = Path(tempfile.mkdtemp(prefix="mw-replicas-"))
    loop = LoopThread()
    group = Replicas(loop, etcd, [], write_kek(root), root)
    try:
        group.apply(files or shop_files(), "the shop")
        for index in range(count):
            group.planes.append(
                start_plane(
                    loop, etcd.url, group.kek, root / f"r{index}", clock or SystemClock(), run
                )
            )
        yield group
    finally:
        for plane in group.planes:
            loop.run(plane.stop(), timeout=20)
        loop.close()
        shutil.rmtree(root, ignore_errors=True)
