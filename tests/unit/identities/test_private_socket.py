"""Where the grpc server behind an attesting socket listens: a fresh 0700 directory beside the
public socket, or in the temporary directory when a socket address there would be too long."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from meshwarden.identities._front import PrivateSocketUpstream


def test_the_private_directory_is_beside_the_socket_and_only_for_its_owner(
    tmp_path: Path,
) -> None:
    upstream = PrivateSocketUpstream(tmp_path / "agent.sock")
    try:
        assert upstream.directory.parent == tmp_path
        assert os.stat(upstream.directory).st_mode & 0o777 == 0o700
    finally:
        upstream.remove()
    assert not upstream.directory.exists()


def test_a_socket_directory_too_deep_for_an_address_falls_back_to_the_temporary_directory(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 90)
    upstream = PrivateSocketUpstream(deep / "agent.sock")
    try:
        assert upstream.directory.parent == Path(tempfile.gettempdir())
        assert len(os.fsencode(upstream.path)) <= 107
    finally:
        upstream.remove()
