"""etcd with user authentication (`?user=NAME&password-file=FILE`): a replica whose user may
touch only the meshwarden prefix works, and renews its token when etcd lets it expire; a wrong
password, a user without access to the prefix, or no user at all is a clear error; the password
never appears in a message."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from meshwarden.identities import SystemClock

from meshwarden._etcd import Etcd, StoreUrl
from meshwarden.cli import main

from .._loopback import free_port
from ..integration.harness import LoopThread, wait_for
from .etcd_cluster import ETCD, EtcdCluster, Member
from .replicas import SHOP, start_plane, write_kek
from .test_replicas import OPEN_METRICS

ETCDCTL = ETCD.with_name("etcdctl")
TOKEN_TTL = 2  # seconds etcd keeps an unused auth token


@dataclass
class AuthEtcd:
    endpoint: str
    root: Path

    def url(self, user: str, password: str) -> str:
        path = self.root / f"{user}-{len(password)}.password"
        path.write_text(password + "\n")
        path.chmod(0o600)
        return f"etcd://{self.endpoint}?user={user}&password-file={path}"


def _etcdctl(endpoint: str, *args: str) -> None:
    subprocess.run(
        [str(ETCDCTL), f"--endpoints={endpoint}", *args], check=True, capture_output=True
    )


@pytest.fixture
def auth_etcd() -> Iterator[AuthEtcd]:
    root = Path(tempfile.mkdtemp(prefix="mw-etcd-auth-"))
    member = Member("m0", free_port(), free_port(), root / "m0", root / "m0.log")
    cluster = EtcdCluster(root, [member])
    command = member.command(f"m0=http://127.0.0.1:{member.peer_port}")
    command += ["--auth-token-ttl", str(TOKEN_TTL), "--bcrypt-cost", "4"]
    with member.log.open("ab") as log:
        member.process = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        cluster.wait_healthy()
        ctl = lambda *args: _etcdctl(member.endpoint, *args)  # noqa: E731
        ctl("user", "add", "root", "--new-user-password=root-secret", "--interactive=false")
        ctl("user", "grant-role", "root", "root")
        for user, prefix in (("mw", "/meshwarden/"), ("stranger", "/elsewhere/")):
            ctl("role", "add", user)
            ctl("role", "grant-permission", user, "--prefix=true", "readwrite", prefix)
            ctl("user", "add", user, f"--new-user-password={user}-pw", "--interactive=false")
            ctl("user", "grant-role", user, user)
        ctl("auth", "enable")
        yield AuthEtcd(member.endpoint, root)
    finally:
        cluster.stop()


def test_a_replica_works_with_a_user_limited_to_the_meshwarden_prefix(auth_etcd, capsys):
    url = auth_etcd.url("mw", "mw-pw")
    changed = auth_etcd.root / "changed"
    shutil.copytree(SHOP, changed)
    with (changed / "policies.yaml").open("a") as policies:
        policies.write(OPEN_METRICS)
    assert main(["apply", str(SHOP), "--store", url, "-m", "first"]) == 0
    assert main(["token", "create", "--store", url, "--node", "web-1"]) == 0  # a leased key
    assert capsys.readouterr().out.strip()
    loop = LoopThread()
    plane = None
    try:
        kek = write_kek(auth_etcd.root)
        plane = start_plane(loop, url, kek, auth_etcd.root / "r0", SystemClock())
        wait_for(lambda: plane is not None and plane.replica.source.delivered == 1, 60)
        assert loop.call(plane._health)["status"] == "ok"
        assert main(["apply", str(changed), "--store", url, "-m", "second"]) == 0
        wait_for(lambda: plane is not None and plane.replica.source.delivered == 2, 60)
    finally:
        if plane is not None:
            loop.run(plane.stop(), timeout=20)
        loop.close()


def test_an_expired_token_is_renewed_without_an_error(auth_etcd):
    async def read_twice() -> tuple[str | None, str | None]:
        etcd = Etcd.of(StoreUrl.parse(auth_etcd.url("mw", "mw-pw")))
        try:
            await etcd.get(b"/meshwarden/policy/head")
            first = etcd._token
            # etcd drops an unused token at its next 1 s tick after the TTL: 2 s to spare under load
            await asyncio.sleep(TOKEN_TTL + 3)
            await etcd.get(b"/meshwarden/policy/head")
            return first, etcd._token
        finally:
            await etcd.close()

    first, second = asyncio.run(read_twice())
    assert first and second and first != second


def _server(url: str, root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    data = Path(tempfile.mkdtemp(prefix="mw-auth-data-"))
    try:
        kek = write_kek(data)
        code = main(["server", "--store", url, "--kek-file", str(kek), "--data-dir", str(data)])
    finally:
        shutil.rmtree(data, ignore_errors=True)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.mark.parametrize(
    ("user", "password", "message"),
    [
        ("mw", "not-the-password", "etcd refused user 'mw': wrong user name or password"),
        ("stranger", "stranger-pw", "etcd user 'stranger' has no permission on /meshwarden/"),
    ],
    ids=["wrong-password", "no-access-to-the-prefix"],
)
def test_a_replica_refused_by_etcd_does_not_start_and_says_why(
    auth_etcd, capsys, user, password, message
):
    code, output = _server(auth_etcd.url(user, password), auth_etcd.root, capsys)
    assert code == 1
    assert message in output
    assert password not in output


def test_a_store_command_without_a_user_is_told_that_etcd_requires_one(auth_etcd, capsys):
    assert main(["history", "--store", f"etcd://{auth_etcd.endpoint}"]) == 1
    assert "etcd requires authentication: add ?user=NAME&password-file=FILE" in (
        capsys.readouterr().err
    )


def test_a_password_in_the_url_or_in_a_readable_file_is_refused_before_anything_runs(
    tmp_path, capsys
):
    with pytest.raises(SystemExit) as stopped:
        main(["history", "--store", "etcd://127.0.0.1:2379?user=mw&password=hunter2"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "password-file=FILE" in err and "hunter2" not in err
    loose = tmp_path / "password"
    loose.write_text("hunter2\n")
    loose.chmod(0o644)
    with pytest.raises(SystemExit):
        main(["history", "--store", f"etcd://127.0.0.1:2379?user=mw&password-file={loose}"])
    err = capsys.readouterr().err
    assert "readable by its owner only" in err and "hunter2" not in err
