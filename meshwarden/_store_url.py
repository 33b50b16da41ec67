"""The store URL: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?OPTIONS]`, where OPTIONS are
client TLS (`ca=FILE`, `cert=FILE`, `key=FILE`) and etcd's user authentication (`user=NAME`,
`password-file=FILE`). A password is only ever read from its file (mode 0600): never on a
command line, never in a message (`str(url)` drops the whole query)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import grpc

from meshwarden._secret_file import read_secret_file

__all__ = ["StoreAuth", "StoreTls", "StoreUrl"]

_OPTIONS = ("ca", "cert", "key", "user", "password-file")


@dataclass(frozen=True)
class StoreTls:
    """Client TLS to etcd: the CA that signed the members' certificates and, for etcd's
    `--client-cert-auth`, this client's certificate and key (PEM files)."""

    ca: str
    cert: str | None = None
    key: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Raises OSError naming the file that cannot be read."""
        cert = Path(self.cert).read_bytes() if self.cert else None
        key = Path(self.key).read_bytes() if self.key else None
        return grpc.ssl_channel_credentials(Path(self.ca).read_bytes(), key, cert)


@dataclass(frozen=True)
class StoreAuth:
    """An etcd user and the file holding its password."""

    user: str
    password_file: str

    def password(self) -> str:
        """The password (the file's first line). Raises StateError when the file is missing,
        a symlink, readable by others, or empty."""
        from meshwarden.identities import StateError

        text = read_secret_file(Path(self.password_file), "etcd password")
        lines = text.decode("utf-8", "replace").splitlines()
        if not lines or not lines[0]:
            raise StateError(f"{self.password_file}: the etcd password file is empty")
        return lines[0]


@dataclass(frozen=True)
class StoreUrl:
    """The members, the key prefix (default `/meshwarden/`) the shared state lives under,
    client TLS (`ca` alone: TLS; with `cert` and `key`: also authenticated by certificate) and
    the etcd user, if any."""

    endpoints: tuple[str, ...]
    prefix: str = "/meshwarden/"
    tls: StoreTls | None = None
    auth: StoreAuth | None = None

    @classmethod
    def parse(cls, text: str) -> StoreUrl:
        """ValueError with the reason for anything else."""
        if not text.startswith("etcd://"):
            raise ValueError(f"{text!r}: a store URL starts with etcd:// (etcd://HOST:PORT,...)")
        rest, _, query = text[len("etcd://") :].partition("?")
        fields = _fields(text.partition("?")[0], query)
        hosts, _, path = rest.partition("/")
        endpoints = tuple(part.strip() for part in hosts.split(",") if part.strip())
        if not endpoints:
            raise ValueError(f"{text!r}: no etcd member (etcd://HOST:PORT,...)")
        for endpoint in endpoints:
            split = urlsplit(f"//{endpoint}")
            try:
                port = split.port
            except ValueError:
                port = None
            if not split.hostname or port is None or port == 0:
                raise ValueError(f"{text!r}: {endpoint!r} is not HOST:PORT")
        prefix = "/" + path.strip("/") + "/" if path.strip("/") else "/meshwarden/"
        shown = text.partition("?")[0]  # no option value in a message
        return cls(endpoints, prefix, _tls(shown, fields), _auth(shown, fields))

    def __str__(self) -> str:
        """The URL without its query (file names are not secret, but keep messages short)."""
        suffix = "" if self.prefix == "/meshwarden/" else self.prefix.rstrip("/")
        return "etcd://" + ",".join(self.endpoints) + suffix


def _fields(text: str, query: str) -> dict[str, str]:
    fields = dict(parse_qsl(query, keep_blank_values=True))
    if "password" in fields:
        raise ValueError(
            f"{StoreUrl.parse(text.partition('?')[0])!s}: give the etcd password in a file "
            "(password-file=FILE, mode 0600), never in the URL"
        )
    unknown = sorted(set(fields) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"{text!r}: unknown store option {unknown[0]!r} ({', '.join(_OPTIONS)})")
    return fields


def _tls(text: str, fields: dict[str, str]) -> StoreTls | None:
    if not any(fields.get(name) is not None for name in ("ca", "cert", "key")):
        return None
    if not fields.get("ca"):
        raise ValueError(f"{text!r}: TLS needs ca=FILE (the CA of the etcd members)")
    if bool(fields.get("cert")) != bool(fields.get("key")):
        raise ValueError(f"{text!r}: cert=FILE and key=FILE go together")
    return StoreTls(fields["ca"], fields.get("cert") or None, fields.get("key") or None)


def _auth(text: str, fields: dict[str, str]) -> StoreAuth | None:
    user, password_file = fields.get("user"), fields.get("password-file")
    if user is None and password_file is None:
        return None
    if not user or not password_file:
        raise ValueError(f"{text!r}: user=NAME and password-file=FILE go together")
    return StoreAuth(user, password_file)
