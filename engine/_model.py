"""The validated document model of the policy language (shared/spec/policy-language.md).

Pydantic models with unknown fields forbidden and strict types, so that `on`, `yes` or a number
where a string belongs is reported instead of silently converted. Each value check lives in
`_validators` and is attached per list item, so an error points at the exact item.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from meshwarden.engine import _validators as v
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

DnsLabel = Annotated[str, AfterValidator(v.dns_label)]
Port = Annotated[int, AfterValidator(v.port_number)]
PortSpec = Annotated[int | str, AfterValidator(v.port_spec)]
Cidr = Annotated[str, AfterValidator(v.cidr)]
IpAddress = Annotated[str, AfterValidator(v.ip_address)]
IdentityPattern = Annotated[str, AfterValidator(v.identity_pattern)]
StringPattern = Annotated[str, AfterValidator(v.string_pattern)]
PathPattern = Annotated[str, AfterValidator(v.path_pattern)]
Method = Annotated[str, AfterValidator(v.http_method)]
LabelKey = Annotated[str, AfterValidator(v.label_key)]
LabelValue = Annotated[str, AfterValidator(v.label_value)]
ConditionValue = Annotated[int | str, AfterValidator(lambda x: v.string_pattern(str(x)))]
WhenValue = Annotated[int | str, AfterValidator(lambda x: v.condition_value(str(x)))]
Transport = Literal["tcp", "udp", "sctp"]
PortProtocol = Literal["http", "grpc", "tcp", "udp", "sctp"]
PROXIED = frozenset({"http", "grpc", "tcp"})  # what sidecars carry; udp and sctp bypass them


def transport_of(protocol: str) -> str:
    """The transport a port protocol rides on: http and grpc count as tcp."""
    return "tcp" if protocol in PROXIED else protocol


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )


class Metadata(_Strict):
    name: Annotated[str, AfterValidator(v.dns_label)]
    namespace: DnsLabel = "default"
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LabelRequirement(_Strict):
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[LabelValue] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(_Strict):
    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    match_expressions: list[LabelRequirement] = Field(default_factory=list)


class WorkloadSelector(LabelSelector):
    namespaces: list[DnsLabel] | None = None


class ExtAuthzSpec(_Strict):
    """How a sidecar in ext-authz enforcement treats an engine that does not answer in time:
    fail closed (403) unless `fail_open`; and how HTTP ports ask the engine: gRPC `Check`, or
    `http` (Envoy's HTTP ext_authz client on the control plane's HTTP/1.1 authz port)."""

    fail_open: bool = False
    timeout: str = Field(default="250ms", pattern=r"^[0-9]{1,6}(ms|s)$")
    transport: Literal["grpc", "http"] = "grpc"


class NamespaceSettings(_Strict):
    """Per-namespace settings of the Mesh (`spec.namespaces.<ns>`)."""

    default_mode: Literal["enforce", "dry-run"] | None = None
    mtls: Literal["STRICT", "PERMISSIVE"] | None = None  # overrides Mesh mtls for the namespace


class MeshSpec(_Strict):
    trust_domain: Annotated[str, AfterValidator(v.trust_domain)] = "meshwarden.local"
    root_namespace: DnsLabel = "meshwarden-system"
    mtls: Literal["STRICT", "PERMISSIVE"] = "STRICT"
    default_policy: Literal["allow", "deny"] = "allow"
    enforcement: Literal["envoy-rbac", "ext-authz"] = "envoy-rbac"
    ext_authz: ExtAuthzSpec = Field(default_factory=ExtAuthzSpec)
    default_mode: Literal["enforce", "dry-run"] = "enforce"  # dry-run: monitor mode
    default_egress_policy: Literal["allow", "deny"] = "allow"  # sources no egress ALLOW selects
    namespaces: dict[DnsLabel, NamespaceSettings] = Field(default_factory=dict)


class WorkloadPort(_Strict):
    """A port a workload serves, with its protocol: http, grpc or tcp (through its sidecar), or
    udp or sctp (which no sidecar carries: the packet filter enforces them)."""

    name: DnsLabel | None = None
    port: Port
    target_port: Port | None = None
    protocol: PortProtocol = "tcp"
    mtls: Literal["STRICT", "PERMISSIVE"] | None = None  # overrides the workload's mode

    @property
    def is_http(self) -> bool:
        return self.protocol in ("http", "grpc")

    @property
    def transport(self) -> str:
        return transport_of(self.protocol)

    @property
    def proxied(self) -> bool:
        """Whether the workload's sidecar serves this port (tcp, http, grpc)."""
        return self.protocol in PROXIED


class Upstream(_Strict):
    service: Annotated[str, AfterValidator(v.upstream_service)]
    port: Port
    local_port: Port


class WorkloadSpec(_Strict):
    service_account: Annotated[str, AfterValidator(v.dns_subdomain)] | None = None
    spiffe_id: Annotated[str, AfterValidator(v.spiffe_id)] | None = None
    addresses: list[IpAddress] = Field(default_factory=list)
    ports: list[WorkloadPort] = Field(default_factory=list)
    upstreams: list[Upstream] = Field(default_factory=list)
    selectors: list[Annotated[str, AfterValidator(v.attestation_selector)]] = Field(
        default_factory=list
    )
    enforcement: Literal["envoy-rbac", "ext-authz"] | None = None
    mtls: Literal["STRICT", "PERMISSIVE"] | None = None  # overrides the namespace's mode


class ServicePort(_Strict):
    name: DnsLabel | None = None
    port: Port
    target_port: Port | None = None
    protocol: PortProtocol = "tcp"


class ServiceSpec(_Strict):
    selector: LabelSelector = Field(default_factory=LabelSelector)
    ports: list[ServicePort] = Field(default_factory=list)


class JwtConstraint(_Strict):
    issuers: list[StringPattern] | None = None
    subjects: list[StringPattern] | None = None
    claims: dict[str, list[ConditionValue]] | None = None


class Source(_Strict):
    identities: list[IdentityPattern] | None = None
    not_identities: list[IdentityPattern] | None = None
    workloads: WorkloadSelector | None = None
    namespaces: list[StringPattern] | None = None
    jwt: JwtConstraint | None = None
    ip_blocks: list[Cidr] | None = None
    not_ip_blocks: list[Cidr] | None = None


class Operation(_Strict):
    ports: list[PortSpec] | None = None
    not_ports: list[PortSpec] | None = None
    methods: list[Method] | None = None
    not_methods: list[Method] | None = None
    paths: list[PathPattern] | None = None
    not_paths: list[PathPattern] | None = None
    hosts: list[StringPattern] | None = None
    not_hosts: list[StringPattern] | None = None
    protocols: list[Transport] | None = None  # omitted: any; http/grpc ports count as tcp


class Condition(_Strict):
    key: Annotated[str, AfterValidator(v.condition_key)]
    values: list[WhenValue] | None = None
    not_values: list[WhenValue] | None = None

    @field_validator("values", "not_values")
    @classmethod
    def _values_fit_key(
        cls, values: list[int | str] | None, info: ValidationInfo
    ) -> list[int | str] | None:
        key = info.data.get("key")
        for value in values or []:
            if key == "source.ip":
                v.cidr(str(value)) if "/" in str(value) else v.ip_address(str(value))
            elif key == "destination.port":
                v.port_range(value)
            if key != "request.path":
                v.no_path_template(str(value), str(key))
        return values

    @model_validator(mode="after")
    def _has_values(self) -> Condition:
        if self.values is None and self.not_values is None:
            raise ValueError(f"condition on {self.key!r} needs 'values' or 'notValues'")
        return self


class Rule(_Strict):
    from_: list[Source] | None = Field(default=None, alias="from")
    to: list[Operation] | None = None
    when: list[Condition] | None = None


class AuthorizationPolicySpec(_Strict):
    direction: Literal["ingress", "egress"] = "ingress"
    selector: LabelSelector | None = None
    action: Literal["ALLOW", "DENY", "AUDIT"] = "ALLOW"
    mode: Literal["enforce", "dry-run"] = "enforce"
    rules: list[Rule] | None = None


class Destination(_Strict):
    """One `to` destination of an egress rule: a mesh workload by identity, or an address outside
    the mesh by IP (the identity-first rule, seen from the source)."""

    identities: list[IdentityPattern] | None = None
    not_identities: list[IdentityPattern] | None = None
    workloads: WorkloadSelector | None = None
    namespaces: list[StringPattern] | None = None
    ip_blocks: list[Cidr] | None = None
    not_ip_blocks: list[Cidr] | None = None


class EgressRule(_Strict):
    """An egress rule: where the selected (source) workloads may connect. L4 only."""

    to: list[Destination] | None = None
    ports: list[PortSpec] | None = None
    not_ports: list[PortSpec] | None = None
    protocols: list[Transport] | None = None


class EgressPolicySpec(_Strict):
    """An AuthorizationPolicy with `direction: egress`: `selector` picks SOURCE workloads."""

    direction: Literal["egress"]
    selector: LabelSelector | None = None
    action: Literal["ALLOW", "DENY", "AUDIT"] = "ALLOW"
    mode: Literal["enforce", "dry-run"] = "enforce"
    rules: list[EgressRule] | None = None


class HeaderSource(_Strict):
    name: Annotated[str, AfterValidator(v.header_name)]
    prefix: str = ""


def _default_headers() -> list[HeaderSource]:
    return [HeaderSource(name="authorization", prefix="Bearer ")]


def _check_jwks(text: str) -> str:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"jwks is not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise ValueError('jwks must be a JSON object with a non-empty "keys" list')
    return text


def _check_jwks_uri(text: str) -> str:
    if not text.startswith(("https://", "http://")):
        raise ValueError(f"jwksUri {text!r} must be an http(s) URL")
    return text


class JwtIssuerSpec(_Strict):
    selector: LabelSelector | None = None
    issuer: Annotated[str, Field(min_length=1)]
    audiences: list[str] = Field(default_factory=list)
    jwks: Annotated[str, AfterValidator(_check_jwks)] | None = None
    jwks_uri: Annotated[str, AfterValidator(_check_jwks_uri)] | None = None
    spiffe_trust_domain: Annotated[str, AfterValidator(v.trust_domain)] | None = None
    from_headers: list[HeaderSource] = Field(default_factory=_default_headers)
    forward_original_token: bool = False

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtIssuerSpec:
        given = [n for n in ("jwks", "jwks_uri", "spiffe_trust_domain") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'jwks' (inline JWKS JSON), 'jwksUri' or 'spiffeTrustDomain'"
                + (f" (found: {', '.join(to_camel(g) for g in given)})" if given else "")
            )
        return self


class HostPeer(_Strict):
    """Where packets to a Host may come from (or, in `egress`, go to): addresses only, since
    packets carry no identity."""

    ip_blocks: list[Cidr] | None = None
    not_ip_blocks: list[Cidr] | None = None


class HostRule(_Strict):
    """An inbound rule for host ports that no sidecar fronts (SSH, a published container port)."""

    ports: Annotated[list[PortSpec], Field(min_length=1)]
    protocol: Transport = "tcp"
    from_: list[HostPeer] | None = Field(default=None, alias="from")


class HostEgressRule(_Strict):
    """An outbound rule for the host's own traffic (not a workload's, not a sidecar's)."""

    ports: Annotated[list[PortSpec], Field(min_length=1)]
    protocol: Transport = "tcp"
    to: list[HostPeer] | None = None


class HostSpec(_Strict):
    """A machine of the mesh: what reaches it beside its sidecars. Everything else is closed."""

    node_name: Annotated[str, AfterValidator(v.dns_subdomain)] | None = None
    addresses: list[IpAddress] = Field(default_factory=list)
    management_ports: Annotated[list[Port], Field(min_length=1)] = Field(
        default_factory=lambda: [22]
    )
    ingress: list[HostRule] = Field(default_factory=list)
    egress: list[HostEgressRule] = Field(default_factory=list)
    default_egress: Literal["allow", "deny"] = "allow"  # deny: only `egress` rules leave


SPECS: dict[str, type[_Strict]] = {
    "Mesh": MeshSpec,
    "Workload": WorkloadSpec,
    "Service": ServiceSpec,
    "AuthorizationPolicy": AuthorizationPolicySpec,
    "JwtIssuer": JwtIssuerSpec,
    "Host": HostSpec,
}
API_VERSION = "meshwarden.io/v1alpha1"


def spec_model(kind: object, raw_spec: object) -> type[_Strict] | None:
    """The model a document's spec is validated with: by kind, and for an AuthorizationPolicy
    by its `direction` (an egress policy has rules of another shape)."""
    egress = isinstance(raw_spec, dict) and raw_spec.get("direction") == "egress"
    if kind == "AuthorizationPolicy" and egress:
        return EgressPolicySpec
    return SPECS.get(str(kind))


class Envelope(_Strict):
    api_version: Literal["meshwarden.io/v1alpha1"]
    kind: Literal["Mesh", "Workload", "Service", "AuthorizationPolicy", "JwtIssuer", "Host"]
    metadata: Metadata
    spec: dict[str, object] = Field(default_factory=dict)
