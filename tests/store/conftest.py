"""Fixtures of the shared-store tests: real etcd clusters on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .etcd_cluster import EtcdCluster, start_cluster


@pytest.fixture
def etcd() -> Iterator[EtcdCluster]:
    """One etcd member."""
    cluster = start_cluster(1)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd3() -> Iterator[EtcdCluster]:
    """A three-member etcd cluster (a leader can be killed and the rest elect another)."""
    cluster = start_cluster(3)
    try:
        yield cluster
    finally:
        cluster.stop()
