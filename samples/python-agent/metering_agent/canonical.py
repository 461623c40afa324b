"""The canonical record encoding (format 1) and the hash chain of proto/metering/v1/canonical-encoding.md."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Optional, Sequence

GENESIS = bytes(32)
"""hash(0): the chain of a stream starts from 32 zero bytes."""

FORMAT = 1

SM_ACTIVE_TAG = 0x01
"""The tag of the optional mean SM activity (basis points, u32) after the energy field."""


@dataclass(frozen=True)
class Record:
    """One usage record, field for field as ingest.proto's UsageRecord carries it."""

    sequence: int
    job_id: str
    holder_code: str
    device_model: str
    device_count: int
    share_numerator: int
    share_denominator: int
    start_unix_ms: int
    end_unix_ms: int
    site: str
    device_uuids: tuple[str, ...] = ()
    energy_mwh: Optional[int] = None
    sm_active_bp: Optional[int] = None


def _string(text: str) -> bytes:
    # Strict UTF-8: text that is not (a lone surrogate from JSON, say) is refused here, as the
    # server refuses it, rather than hashed in some replaced form.
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError(f"a string of {len(data)} bytes does not fit the encoding's 2-byte length")
    return struct.pack(">H", len(data)) + data


def encode(provider_id: str, stream_id: str, record: Record) -> bytes:
    """The record's canonical bytes, in the order of the document's table."""
    parts: list[bytes] = [
        bytes([FORMAT]),
        _string(provider_id),
        _string(stream_id),
        struct.pack(">Q", record.sequence),
        _string(record.job_id),
        _string(record.holder_code),
        _string(record.device_model),
        struct.pack(">III", record.device_count, record.share_numerator, record.share_denominator),
        struct.pack(">qq", record.start_unix_ms, record.end_unix_ms),
        _string(record.site),
        struct.pack(">H", len(record.device_uuids)),
    ]
    parts.extend(_string(uuid) for uuid in record.device_uuids)
    if record.energy_mwh is None:
        parts.append(b"\x00" + bytes(8))
    else:
        parts.append(b"\x01" + struct.pack(">Q", record.energy_mwh))
    # Optional fields added to format 1 are written only when present, as a tag byte and the
    # value; an absent one writes nothing, so records without it hash as they always did.
    if record.sm_active_bp is not None:
        parts.append(bytes([SM_ACTIVE_TAG]) + struct.pack(">I", record.sm_active_bp))
    return b"".join(parts)


def next_hash(previous: bytes, canonical: bytes) -> bytes:
    """hash(n) = SHA-256(hash(n-1) || canonical(record n))."""
    return hashlib.sha256(previous + canonical).digest()


def chain(provider_id: str, stream_id: str, records: Sequence[Record]) -> list[bytes]:
    """hash(0) .. hash(len(records)): element n is the chain hash at sequence n."""
    hashes = [GENESIS]
    for expected, record in enumerate(records, start=1):
        if record.sequence != expected:
            raise ValueError(f"record {expected} carries sequence {record.sequence}")
        hashes.append(next_hash(hashes[-1], encode(provider_id, stream_id, record)))
    return hashes
