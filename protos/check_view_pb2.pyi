# ruff: noqa
# mypy: ignore-errors
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckRequestView(_message.Message):
    __slots__ = ("attributes",)
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    attributes: AttributeContextView
    def __init__(
        self, attributes: _Optional[_Union[AttributeContextView, _Mapping]] = ...
    ) -> None: ...

class AttributeContextView(_message.Message):
    __slots__ = ("source", "request", "metadata_context")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    METADATA_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    source: PeerView
    request: RequestView
    metadata_context: MetadataView
    def __init__(
        self,
        source: _Optional[_Union[PeerView, _Mapping]] = ...,
        request: _Optional[_Union[RequestView, _Mapping]] = ...,
        metadata_context: _Optional[_Union[MetadataView, _Mapping]] = ...,
    ) -> None: ...

class PeerView(_message.Message):
    __slots__ = ("address", "principal")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    address: AddressView
    principal: str
    def __init__(
        self,
        address: _Optional[_Union[AddressView, _Mapping]] = ...,
        principal: _Optional[str] = ...,
    ) -> None: ...

class AddressView(_message.Message):
    __slots__ = ("socket_address",)
    SOCKET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    socket_address: SocketAddressView
    def __init__(
        self, socket_address: _Optional[_Union[SocketAddressView, _Mapping]] = ...
    ) -> None: ...

class SocketAddressView(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class RequestView(_message.Message):
    __slots__ = ("http",)
    HTTP_FIELD_NUMBER: _ClassVar[int]
    http: HttpRequestView
    def __init__(self, http: _Optional[_Union[HttpRequestView, _Mapping]] = ...) -> None: ...

class HttpRequestView(_message.Message):
    __slots__ = ("method", "headers", "path", "host")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

    METHOD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    method: str
    headers: _containers.ScalarMap[str, str]
    path: str
    host: str
    def __init__(
        self,
        method: _Optional[str] = ...,
        headers: _Optional[_Mapping[str, str]] = ...,
        path: _Optional[str] = ...,
        host: _Optional[str] = ...,
    ) -> None: ...

class MetadataView(_message.Message):
    __slots__ = ("filter_metadata",)
    class FilterMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _struct_pb2.Struct
        def __init__(
            self,
            key: _Optional[str] = ...,
            value: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...,
        ) -> None: ...

    FILTER_METADATA_FIELD_NUMBER: _ClassVar[int]
    filter_metadata: _containers.MessageMap[str, _struct_pb2.Struct]
    def __init__(
        self, filter_metadata: _Optional[_Mapping[str, _struct_pb2.Struct]] = ...
    ) -> None: ...
