"""The channel (TLS, the API key) and what a failed call means, as the services document it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

CALL_TIMEOUT_S = 60
"""How long a unary call may take; a refused connection fails at once, without waiting for it."""


class UsageError(Exception):
    """A bad option or input, found before anything is sent (exit code 2)."""


class Unreachable(Exception):
    """No server answered (exit code 5)."""


class Refused(Exception):
    """The server refused the call with a status and a reason (exit code 4)."""

    def __init__(self, status: grpc.StatusCode, reason: str, message: str) -> None:
        self.status, self.reason, self.message = status, reason, message
        # The same words as the `metering` CLI: the status in the C# spelling, then the reason.
        status_name = "".join(part.capitalize() for part in status.name.split("_"))
        super().__init__(f"refused: {status_name} {reason or '(no reason)'}: {message}")


def _status_types() -> tuple[type, type]:
    # google.rpc.Status and ErrorInfo, described here by their field numbers, since Debian's
    # python3-protobuf does not ship them; `details` is read as Any's two fields.
    file = descriptor_pb2.FileDescriptorProto(name="metering_agent/rpc_status.proto", package="metering_agent.rpc", syntax="proto3")
    optional, repeated = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    types = descriptor_pb2.FieldDescriptorProto
    detail = file.message_type.add(name="Detail")
    detail.field.add(name="type_url", number=1, type=types.TYPE_STRING, label=optional)
    detail.field.add(name="value", number=2, type=types.TYPE_BYTES, label=optional)
    status = file.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=types.TYPE_INT32, label=optional)
    status.field.add(name="message", number=2, type=types.TYPE_STRING, label=optional)
    status.field.add(name="details", number=3, type=types.TYPE_MESSAGE, type_name=".metering_agent.rpc.Detail", label=repeated)
    info = file.message_type.add(name="ErrorInfo")
    info.field.add(name="reason", number=1, type=types.TYPE_STRING, label=optional)
    info.field.add(name="domain", number=2, type=types.TYPE_STRING, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    factory = message_factory.MessageFactory(pool)
    build: Callable[[Any], type] = getattr(message_factory, "GetMessageClass", None) or factory.GetPrototype
    return build(pool.FindMessageTypeByName("metering_agent.rpc.Status")), build(pool.FindMessageTypeByName("metering_agent.rpc.ErrorInfo"))


_Status, _ErrorInfo = _status_types()


def error_from(error: grpc.RpcError) -> Exception:
    """A failed call as the agent reports it: refused (with the ErrorInfo reason) or unreachable."""
    code: grpc.StatusCode = error.code()
    message = error.details() or ""
    reason = ""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in _Status.FromString(value).details:
                if detail.type_url.endswith("/google.rpc.ErrorInfo"):
                    reason = _ErrorInfo.FromString(detail.value).reason
    if not reason and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        hint = " (a server certificate from a private CA needs --ca)" if "SSL" in message or "ertificate" in message else ""
        return Unreachable(f"the server does not answer ({code.name}: {message}){hint}")
    return Refused(code, reason, message)


@dataclass(frozen=True)
class Endpoint:
    """Where the server is and how to reach it."""

    url: str
    api_key: str
    ca: Optional[Path] = None
    client_cert: Optional[Path] = None
    client_key: Optional[Path] = None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


SERVERS_MAX = 16
"""The most servers one --server names, as the C# client takes (ServerList.ServersMax)."""


def open_channels(endpoint: Endpoint) -> list[grpc.Channel]:
    """One channel per server --server names (comma-separated: several stateless servers on one database); each connects on its first call."""
    urls = [url.strip() for url in endpoint.url.split(",") if url.strip()]
    if not urls:
        raise UsageError("--server names no server")
    if len(urls) > SERVERS_MAX:
        raise UsageError(f"--server names {len(urls)} servers; at most {SERVERS_MAX} are taken")
    if len({urlsplit(url).scheme for url in urls}) > 1:
        raise UsageError("--server mixes http:// and https://; every server is reached the same way")
    authorities = [urlsplit(url).netloc.lower() for url in urls]
    if len(set(authorities)) < len(authorities):
        raise UsageError("--server names a server twice")
    return [_open_channel(url, endpoint) for url in urls]


def _open_channel(url: str, endpoint: Endpoint) -> grpc.Channel:
    """A channel over TLS (https://), or cleartext to a loopback address only (http://)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/"):
        raise UsageError(f"--server must be https://HOST:PORT (or http:// on loopback), not '{url}'")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if (endpoint.client_cert is None) != (endpoint.client_key is None):
        raise UsageError("--client-cert and --client-key go together")
    if parts.scheme == "http":
        if not _is_loopback(host):
            raise UsageError(f"the API key would travel in cleartext to {host}: use https://")
        if endpoint.ca or endpoint.client_cert:
            raise UsageError("--ca and --client-cert need an https:// server")
        return grpc.insecure_channel(target)
    try:
        root = endpoint.ca.read_bytes() if endpoint.ca else None
        chain = endpoint.client_cert.read_bytes() if endpoint.client_cert else None
        key = endpoint.client_key.read_bytes() if endpoint.client_key else None
    except OSError as error:
        raise UsageError(f"cannot read {error.filename}: {error.strerror}") from None
    credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
    return grpc.secure_channel(target, credentials)


class _RoundRobin:
    """
    One rpc over several servers: each call goes to the next server in turn, so a stream that
    reconnects after its server went away lands on another. A unary call that finds its server
    unreachable (UNAVAILABLE without a reason) is tried on the others before it fails; a
    streaming call is not, since its requests are consumed as they go: its caller reconnects.
    """

    def __init__(self, callables: list, unary: bool) -> None:
        self._callables, self._unary, self._next = callables, unary, 0

    def _take(self):
        chosen = self._callables[self._next % len(self._callables)]
        self._next += 1
        return chosen

    def __call__(self, request, **options):
        if not self._unary:
            return self._take()(request, **options)
        for attempt in range(len(self._callables)):
            try:
                return self._take()(request, **options)
            except grpc.RpcError as error:
                if attempt == len(self._callables) - 1 or not isinstance(error_from(error), Unreachable):
                    raise
        raise AssertionError("unreachable: the loop returns or raises")


class Services:
    """The rpcs the agent calls, through grpc's generic callables and the messages' own (de)serialisers."""

    def __init__(self, channels: list[grpc.Channel], api_key: str, pb: dict) -> None:
        self.pb = pb
        self.metadata = (("authorization", f"Bearer {api_key}"),)
        ingest, rawlog, audit = pb["ingest"], pb["rawlog"], pb["audit"]

        def rpc(kind: str, method: str, request: Any, response: Any) -> _RoundRobin:
            return _RoundRobin([getattr(channel, kind)(method, request.SerializeToString, response.FromString) for channel in channels], kind == "unary_unary")

        self.ingest_stream = rpc("stream_stream", "/metering.v1.IngestService/Stream", ingest.IngestRequest, ingest.IngestResponse)
        self.upload_log = rpc("stream_unary", "/metering.v1.RawLogService/UploadLog", rawlog.LogChunk, rawlog.UploadReport)
        self.get_upload = rpc("unary_unary", "/metering.v1.RawLogService/GetUpload", rawlog.GetUploadRequest, rawlog.UploadReport)
        self.get_signing_key = rpc("unary_unary", "/metering.v1.AuditService/GetSigningKey", audit.GetSigningKeyRequest, audit.SigningKey)
        self.get_chain_hashes = rpc("unary_unary", "/metering.v1.AuditService/GetChainHashes", audit.GetChainHashesRequest, audit.GetChainHashesResponse)
