"""Signed receipts (format 1) of proto/metering/v1/receipts.md: reading, checking and keeping them."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

PREFIX = b"metering receipt v1\x00"


class EvidenceError(Exception):
    """What the server said does not hold: a receipt, a head or a mark (exit code 3)."""


@dataclass(frozen=True)
class ReceiptFields:
    """The fields inside a receipt's signed bytes: the receipt itself."""

    key_id: str
    provider_id: str
    stream_id: str
    sequence: int
    chain_head: bytes
    committed_at_ms: int


def parse(signed: bytes) -> ReceiptFields:
    """Reads the signed bytes by the document's table; anything else is not a receipt."""
    if not signed.startswith(PREFIX):
        raise EvidenceError("not a receipt: the signed bytes do not start with 'metering receipt v1'")
    position = len(PREFIX)

    def string() -> str:
        nonlocal position
        if position + 2 > len(signed):
            raise EvidenceError("not a receipt: the signed bytes end inside a string")
        (length,) = struct.unpack_from(">H", signed, position)
        position += 2
        if length > 64 or position + length > len(signed):
            raise EvidenceError("not a receipt: a string is longer than 64 bytes or than the receipt")
        text = signed[position:position + length].decode("utf-8")
        position += length
        return text

    key_id, provider_id, stream_id = string(), string(), string()
    if len(signed) != position + 8 + 32 + 8:
        raise EvidenceError(f"not a receipt: {len(signed) - position} bytes follow the stream id, not 48")
    (sequence,) = struct.unpack_from(">Q", signed, position)
    chain_head = signed[position + 8:position + 40]
    (committed_at_ms,) = struct.unpack_from(">q", signed, position + 40)
    return ReceiptFields(key_id, provider_id, stream_id, sequence, chain_head, committed_at_ms)


def key_id_of(public_key: ec.EllipticCurvePublicKey) -> str:
    """The first 8 bytes of SHA-256 over the key's DER SubjectPublicKeyInfo, in lowercase hex."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()[:8].hex()


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("the signing key is not an ECDSA P-256 public key")
    return key


class ReceiptChecker:
    """Checks receipts against trusted signing keys and against what the client itself computed."""

    def __init__(self, keys: Iterable[ec.EllipticCurvePublicKey]) -> None:
        self._keys: Mapping[str, ec.EllipticCurvePublicKey] = {key_id_of(key): key for key in keys}

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def check(self, signed: bytes, signature: bytes, provider_id: str, stream_id: str, sequence: int, chain_head: bytes) -> ReceiptFields:
        """The receipt's fields, once its signature verifies and it says exactly what was expected."""
        fields = parse(signed)
        key = self._keys.get(fields.key_id)
        if key is None:
            raise EvidenceError(f"receipt signed under key id {fields.key_id}, which is not a trusted key ({', '.join(self.key_ids)})")
        try:
            key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise EvidenceError(f"bad signature on the receipt for {fields.stream_id} #{fields.sequence}") from None
        expected = (provider_id, stream_id, sequence, chain_head)
        actual = (fields.provider_id, fields.stream_id, fields.sequence, fields.chain_head)
        if actual != expected:
            raise EvidenceError(
                f"the receipt says {fields.provider_id}/{fields.stream_id} #{fields.sequence} head {fields.chain_head.hex()}, "
                f"expected {provider_id}/{stream_id} #{sequence} head {chain_head.hex()}")
        return fields


def append(path: Path, signed: bytes, signature: bytes, fields: ReceiptFields) -> None:
    """Appends one line in the receipts file format of receipts.md, which `metering audit check-receipts` reads."""
    line = json.dumps({
        "stream_id": fields.stream_id,
        "sequence": fields.sequence,
        "chain_head": fields.chain_head.hex(),
        "key_id": fields.key_id,
        "signed": base64.b64encode(signed).decode("ascii"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }, separators=(",", ":"))
    with path.open("a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()
