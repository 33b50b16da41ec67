# ruff: noqa
# mypy: ignore-errors
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttestRequest(_message.Message):
    __slots__ = ("join_token", "csr")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    csr: bytes
    def __init__(self, join_token: _Optional[str] = ..., csr: _Optional[bytes] = ...) -> None: ...

class AttestResponse(_message.Message):
    __slots__ = ("svid_chain", "bundle")
    SVID_CHAIN_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    svid_chain: _containers.RepeatedScalarFieldContainer[bytes]
    bundle: str
    def __init__(
        self, svid_chain: _Optional[_Iterable[bytes]] = ..., bundle: _Optional[str] = ...
    ) -> None: ...

class RenewNodeSVIDRequest(_message.Message):
    __slots__ = ("csr",)
    CSR_FIELD_NUMBER: _ClassVar[int]
    csr: bytes
    def __init__(self, csr: _Optional[bytes] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("packet_filter_format",)
    PACKET_FILTER_FORMAT_FIELD_NUMBER: _ClassVar[int]
    packet_filter_format: str
    def __init__(self, packet_filter_format: _Optional[str] = ...) -> None: ...

class WorkloadEntry(_message.Message):
    __slots__ = ("spiffe_id", "selectors", "namespace", "name")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    namespace: str
    name: str
    def __init__(
        self,
        spiffe_id: _Optional[str] = ...,
        selectors: _Optional[_Iterable[str]] = ...,
        namespace: _Optional[str] = ...,
        name: _Optional[str] = ...,
    ) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("workloads", "bundle", "packet_filter")
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    PACKET_FILTER_FIELD_NUMBER: _ClassVar[int]
    workloads: _containers.RepeatedCompositeFieldContainer[WorkloadEntry]
    bundle: str
    packet_filter: str
    def __init__(
        self,
        workloads: _Optional[_Iterable[_Union[WorkloadEntry, _Mapping]]] = ...,
        bundle: _Optional[str] = ...,
        packet_filter: _Optional[str] = ...,
    ) -> None: ...

class X509SVIDRequest(_message.Message):
    __slots__ = ("spiffe_id", "csr")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    csr: bytes
    def __init__(self, spiffe_id: _Optional[str] = ..., csr: _Optional[bytes] = ...) -> None: ...

class SignX509SVIDsRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[X509SVIDRequest]
    def __init__(
        self, requests: _Optional[_Iterable[_Union[X509SVIDRequest, _Mapping]]] = ...
    ) -> None: ...

class X509SVIDResult(_message.Message):
    __slots__ = ("spiffe_id", "svid_chain", "error")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SVID_CHAIN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    svid_chain: _containers.RepeatedScalarFieldContainer[bytes]
    error: str
    def __init__(
        self,
        spiffe_id: _Optional[str] = ...,
        svid_chain: _Optional[_Iterable[bytes]] = ...,
        error: _Optional[str] = ...,
    ) -> None: ...

class SignX509SVIDsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[X509SVIDResult]
    def __init__(
        self, results: _Optional[_Iterable[_Union[X509SVIDResult, _Mapping]]] = ...
    ) -> None: ...

class SignJWTSVIDRequest(_message.Message):
    __slots__ = ("spiffe_id", "audience")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    audience: _containers.RepeatedScalarFieldContainer[str]
    def __init__(
        self, spiffe_id: _Optional[str] = ..., audience: _Optional[_Iterable[str]] = ...
    ) -> None: ...

class SignJWTSVIDResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...
