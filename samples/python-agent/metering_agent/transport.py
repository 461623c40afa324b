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


def open_channel(endpoint: Endpoint) -> grpc.Channel:
    """A channel over TLS (https://), or cleartext to a loopback address only (http://); it connects on the first call."""
    parts = urlsplit(endpoint.url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/"):
        raise UsageError(f"--server must be https://HOST:PORT (or http:// on loopback), not '{endpoint.url}'")
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


class Services:
    """The rpcs the agent calls, through grpc's generic callables and the messages' own (de)serialisers."""

    def __init__(self, channel: grpc.Channel, api_key: str, pb: dict) -> None:
        self.pb = pb
        self.metadata = (("authorization", f"Bearer {api_key}"),)
        ingest, rawlog, audit = pb["ingest"], pb["rawlog"], pb["audit"]
        self.ingest_stream = channel.stream_stream(
            "/metering.v1.IngestService/Stream", ingest.IngestRequest.SerializeToString, ingest.IngestResponse.FromString)
        self.upload_log = channel.stream_unary(
            "/metering.v1.RawLogService/UploadLog", rawlog.LogChunk.SerializeToString, rawlog.UploadReport.FromString)
        self.get_upload = channel.unary_unary(
            "/metering.v1.RawLogService/GetUpload", rawlog.GetUploadRequest.SerializeToString, rawlog.UploadReport.FromString)
        self.get_signing_key = channel.unary_unary(
            "/metering.v1.AuditService/GetSigningKey", audit.GetSigningKeyRequest.SerializeToString, audit.SigningKey.FromString)
        self.get_chain_hashes = channel.unary_unary(
            "/metering.v1.AuditService/GetChainHashes", audit.GetChainHashesRequest.SerializeToString, audit.GetChainHashesResponse.FromString)
