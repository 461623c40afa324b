"""Uploads a scheduler log through RawLogService, resuming at the upload's committed offset."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterator

import grpc

from .evidence import check_server_still_holds, keep_receipt
from .receipts import EvidenceError, ReceiptChecker
from .state import StateFile
from .transport import CALL_TIMEOUT_S, Refused, Services, UsageError, error_from

log = logging.getLogger("metering_agent")

CHUNK_BYTES = 1 << 20
"""rawlog.proto: at most 1 MiB of data per chunk."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def upload(services: Services, provider_id: str, state: StateFile, checker: ReceiptChecker, path: Path, stream_id: str,
           log_format: int, mapping, upload_id: str):
    """Sends the file from where the server stands (GetUpload) and returns its UploadReport, its receipt checked and kept."""
    rawlog = services.pb["rawlog"]
    try:
        total_bytes = path.stat().st_size
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    check_server_still_holds(services, provider_id, stream_id, state.acknowledged(provider_id, stream_id))
    offset = 0
    try:
        known = services.get_upload(rawlog.GetUploadRequest(upload_id=upload_id), metadata=services.metadata, timeout=CALL_TIMEOUT_S)
        offset = known.committed_offset
        log.info("upload %s stands at byte %d of %d", upload_id, offset, total_bytes)
    except grpc.RpcError as error:
        refusal = error_from(error)
        if not (isinstance(refusal, Refused) and refusal.reason == "UPLOAD_NOT_FOUND"):
            raise refusal from None

    def chunks() -> Iterator:
        header = rawlog.UploadHeader(upload_id=upload_id, stream_id=stream_id, format=log_format, mapping=mapping,
                                     offset=offset, total_bytes=total_bytes)
        yield rawlog.LogChunk(header=header)
        with path.open("rb") as file:
            file.seek(offset)
            while data := file.read(CHUNK_BYTES):
                yield rawlog.LogChunk(data=data)

    try:
        report = services.upload_log(chunks(), metadata=services.metadata)
    except grpc.RpcError as error:
        raise error_from(error) from None
    if report.upload_id != upload_id or report.stream_id != stream_id:
        raise EvidenceError(f"the report is about upload {report.upload_id} on {report.stream_id}, not {upload_id} on {stream_id}")
    if report.HasField("receipt"):
        keep_receipt(state, checker, report.receipt, provider_id, stream_id, report.committed_sequence, report.chain_head)
    elif report.records:
        raise EvidenceError(f"the server committed {report.records} records of the upload without a receipt")
    return report
