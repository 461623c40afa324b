"""What the agent holds the server to before it sends anything: the marks and heads it was acknowledged."""

from __future__ import annotations

from typing import Optional

import grpc

from .receipts import EvidenceError, ReceiptChecker, ReceiptFields, append
from .state import Acknowledged, StateFile
from .transport import CALL_TIMEOUT_S, Services, error_from


def check_server_still_holds(services: Services, provider_id: str, stream_id: str, acknowledged: Optional[Acknowledged]) -> int:
    """
    Asks the database's stored hashes (AuditService.GetChainHashes) for the stream; returns its committed mark.
    A key of another provider is refused here (OTHER_PROVIDER) before anything is sent. The server
    must still stand at least where it acknowledged, with the acknowledged hash at that sequence.
    """
    audit = services.pb["audit"]
    asked = acknowledged.sequence if acknowledged and acknowledged.sequence > 0 else 1
    try:
        answer = services.get_chain_hashes(
            audit.GetChainHashesRequest(credit_code=provider_id, stream_id=stream_id, sequences=[asked]), metadata=services.metadata, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        raise error_from(error) from None
    if acknowledged is None or acknowledged.sequence == 0:
        return answer.committed_sequence
    if answer.committed_sequence < acknowledged.sequence:
        raise EvidenceError(
            f"{provider_id}/{stream_id}: the server's committed mark is {answer.committed_sequence}, behind {acknowledged.sequence}, "
            f"which it acknowledged with a signed receipt: acknowledged records were lost or removed")
    stored = answer.hashes[0] if answer.hashes else None
    if stored is None or not stored.stored or stored.duplicated or stored.chain_hash != acknowledged.chain_head:
        held = "nothing" if stored is None or not stored.stored else stored.chain_hash.hex()
        raise EvidenceError(
            f"{provider_id}/{stream_id}: the database holds {held} at sequence {acknowledged.sequence}, "
            f"where the server acknowledged head {acknowledged.chain_head.hex()}: the stream was rewritten")
    return answer.committed_sequence


def keep_receipt(state: StateFile, checker: ReceiptChecker, receipt, provider_id: str, stream_id: str, sequence: int, chain_head: bytes) -> ReceiptFields:
    """Checks a receipt against what the client expects, appends it to the receipts file and moves the state to it."""
    fields = checker.check(receipt.signed, receipt.signature, provider_id, stream_id, sequence, chain_head)
    if receipt.key_id and receipt.key_id != fields.key_id:
        raise EvidenceError(f"the receipt's key_id {receipt.key_id} is not the id inside its signed bytes, {fields.key_id}")
    append(state.receipts, receipt.signed, receipt.signature, fields)
    previous = state.acknowledged(provider_id, stream_id)
    if previous is not None and sequence < previous.sequence:
        raise EvidenceError(
            f"{provider_id}/{stream_id}: the server signed a receipt for {sequence}, behind {previous.sequence}, which it acknowledged before")
    state.save(provider_id, stream_id, Acknowledged(sequence, chain_head), fields.committed_at_ms)
    return fields
