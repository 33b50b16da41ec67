"""The certificate authority of one trust domain: composes templates, signer, rotation and
post-mint validation around an injected clock. It never sees a workload's private key: X509-SVIDs
are signed for a public key (from a CSR), and every minted SVID is verified before it leaves."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from meshwarden.engine import SpiffeId, TrustDomain, is_reserved
from meshwarden.identities._authority import (
    JwtAuthority,
    UpstreamCa,
    X509Authority,
    mint_jwt_authority,
    mint_x509_authority,
    sign,
)
from meshwarden.identities._bundle import JwtKey, TrustBundle
from meshwarden.identities._clock import Clock
from meshwarden.identities._errors import IssuanceError
from meshwarden.identities._join_tokens import (
    SERVER_DNS_NAME,
    node_spiffe_id,
    server_spiffe_id,
)
from meshwarden.identities._jwt import JwtSvid, encode_jwt_svid, verify_jwt_svid
from meshwarden.identities._keys import PublicKey
from meshwarden.identities._rotation import Rotation, Slot
from meshwarden.identities._templates import NOT_BEFORE_BACKDATE, x509_svid_template
from meshwarden.identities._validate import X509Svid, check_minted_x509_svid, verify_x509_svid


@dataclass(frozen=True)
class CaConfig:
    """The CA's trust domain, lifetimes of authorities and SVIDs, and optional upstream CA."""

    trust_domain: TrustDomain
    ca_ttl: dt.timedelta = dt.timedelta(hours=24)
    jwt_key_ttl: dt.timedelta = dt.timedelta(hours=24)
    svid_ttl: dt.timedelta = dt.timedelta(hours=1)
    jwt_svid_ttl: dt.timedelta = dt.timedelta(minutes=5)
    refresh_hint: dt.timedelta = dt.timedelta(minutes=5)
    upstream: UpstreamCa | None = None


class CertificateAuthority:
    """Mints X.509- and JWT-SVIDs from rotating authorities and publishes the trust bundle."""

    def __init__(
        self,
        config: CaConfig,
        clock: Clock,
        x509_slots: tuple[Slot[X509Authority], ...] = (),
        jwt_slots: tuple[Slot[JwtAuthority], ...] = (),
        sequence: int = 0,
    ) -> None:
        self.config = config
        self.clock = clock
        td, upstream = config.trust_domain, config.upstream
        self.x509 = Rotation(
            lambda now: mint_x509_authority(td, now, config.ca_ttl, upstream), x509_slots
        )
        self.jwt = Rotation(lambda now: mint_jwt_authority(now, config.jwt_key_ttl), jwt_slots)
        self.sequence = sequence
        self._bundle: TrustBundle | None = None
        self._path_verified: set[x509.Certificate] = set()
        self.issued_until: dict[str, dt.datetime] = {}  # workload SPIFFE ID → newest SVID's end
        self.rotate()

    @property
    def trust_domain(self) -> TrustDomain:
        return self.config.trust_domain

    def rotate(self) -> bool:
        """Apply due key transitions; True (and a new bundle sequence) when anything changed."""
        now = self.clock.now()
        changed: bool = self.x509.advance(now)
        changed = bool(self.jwt.advance(now)) or changed
        if changed or self._bundle is None:
            self.sequence += 1
            self._bundle = self._build_bundle()
        return changed

    def adopt(self, other: CertificateAuthority) -> None:
        """Take the authorities and bundle sequence of `other` (the state replicas share, as the
        store has it): every replica then signs with the same keys and publishes one bundle."""
        if other.trust_domain != self.trust_domain:
            raise ValueError(f"cannot adopt a CA of {other.trust_domain} into {self.trust_domain}")
        self.x509, self.jwt, self.sequence = other.x509, other.jwt, other.sequence
        self._bundle = other.bundle()

    def bundle(self) -> TrustBundle:
        assert self._bundle is not None
        return self._bundle

    def _build_bundle(self) -> TrustBundle:
        if self.config.upstream is not None:
            roots = self.config.upstream.roots()
        else:
            roots = tuple(a.certificate for a in self.x509.published())
        keys = tuple(JwtKey(a.kid, a.key.public_key()) for a in self.jwt.published())
        return TrustBundle(
            trust_domain=self.trust_domain,
            x509_authorities=roots,
            jwt_keys=keys,
            sequence=self.sequence,
            refresh_hint_seconds=int(self.config.refresh_hint.total_seconds()),
        )

    def _check_workload_id(self, spiffe_id: SpiffeId) -> None:
        if spiffe_id.trust_domain != self.trust_domain:
            raise IssuanceError(f"{spiffe_id} is not in trust domain {self.trust_domain}")
        if is_reserved(spiffe_id, self.trust_domain):
            raise IssuanceError(
                f"{spiffe_id} is reserved for the mesh itself (the bare trust domain and "
                f"spiffe://{self.trust_domain}/meshwarden/...); no workload may hold it"
            )

    def sign_x509_svid(
        self, public_key: PublicKey, spiffe_id: SpiffeId, ttl: dt.timedelta | None = None
    ) -> X509Svid:
        """A workload's X509-SVID; IssuanceError for a reserved or foreign ID."""
        self._check_workload_id(spiffe_id)
        svid = self._sign_x509(public_key, spiffe_id, ttl)
        self.issued_until[str(spiffe_id)] = svid.leaf.not_valid_after_utc
        return svid

    def sign_server_svid(
        self, public_key: PublicKey, dns_names: Sequence[str] = (SERVER_DNS_NAME,)
    ) -> X509Svid:
        """The control plane's own SVID: `spiffe://<td>/meshwarden/server` and the DNS name
        agents check. Only the server's own key is ever signed here."""
        return self._sign_x509(public_key, server_spiffe_id(self.trust_domain), None, dns_names)

    def sign_node_csr(
        self, csr: x509.CertificateSigningRequest, node: str, ttl: dt.timedelta | None = None
    ) -> X509Svid:
        """A node SVID, for the node API after attestation (a join token or a node SVID)."""
        return self._sign_x509(_csr_key(csr), node_spiffe_id(self.trust_domain, node), ttl)

    def _sign_x509(
        self,
        public_key: PublicKey,
        spiffe_id: SpiffeId,
        ttl: dt.timedelta | None,
        dns_names: Sequence[str] = (),
    ) -> X509Svid:
        now = self.clock.now()
        authority = self.x509.active()
        builder = x509_svid_template(
            public_key=public_key,
            spiffe_id=spiffe_id,
            serial=x509.random_serial_number(),
            issuer=authority.certificate,
            not_before=now - NOT_BEFORE_BACKDATE,
            not_after=min(now + (ttl or self.config.svid_ttl), authority.not_after),
            dns_names=tuple(dns_names),
        )
        chain = (sign(builder, authority.key), authority.certificate, *authority.chain)
        self._post_mint(chain, now)
        return X509Svid(spiffe_id=spiffe_id, chain=chain)

    def _post_mint(self, chain: tuple[x509.Certificate, ...], now: dt.datetime) -> None:
        """Full path validation for the first SVID of each CA, then the leaf checks and the
        signature only (the CA part of the chain cannot change)."""
        if chain[1] in self._path_verified:
            check_minted_x509_svid(chain, self.bundle(), now)
        else:
            verify_x509_svid(chain, self.bundle(), now)
            self._path_verified.add(chain[1])

    def sign_csr(
        self,
        csr: x509.CertificateSigningRequest,
        spiffe_id: SpiffeId,
        ttl: dt.timedelta | None = None,
    ) -> X509Svid:
        """Sign `csr` for `spiffe_id` (already authorised by the caller). The CSR must carry a
        valid self-signature and an EC key; its subject and extensions are ignored."""
        return self.sign_x509_svid(_csr_key(csr), spiffe_id, ttl)

    def sign_jwt_svid(
        self, spiffe_id: SpiffeId, audience: Sequence[str], ttl: dt.timedelta | None = None
    ) -> JwtSvid:
        self._check_workload_id(spiffe_id)
        now = self.clock.now()
        authority = self.jwt.active()
        expires = min(now + (ttl or self.config.jwt_svid_ttl), authority.not_after)
        svid = encode_jwt_svid(authority, spiffe_id, audience, now, expires)
        verify_jwt_svid(svid.token, self.bundle(), audience[0], now)
        return svid


def _csr_key(csr: x509.CertificateSigningRequest) -> PublicKey:
    if not csr.is_signature_valid:
        raise IssuanceError("CSR signature does not verify")
    key = csr.public_key()
    if not isinstance(key, PublicKey):
        raise IssuanceError(f"CSR key must be EC, got {type(key).__name__}")
    return key
