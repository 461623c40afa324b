"""Streams usage records over IngestService.Stream, resuming at the server's committed mark."""

from __future__ import annotations

import collections
import logging
import queue
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import grpc

from .canonical import Record, chain
from .evidence import check_server_still_holds, keep_receipt
from .receipts import EvidenceError, ReceiptChecker
from .state import StateFile
from .transport import Refused, Services, Unreachable, UsageError, error_from

log = logging.getLogger("metering_agent")


# Refusals that say "later", not "never": the registry busy, the database failing over, or no
# synchronous standby attached to a server that requires one (proto/metering/v1/ingest.proto).
RETRYABLE_REASONS = ("REGISTRY_BUSY", "DATABASE_UNAVAILABLE", "REPLICATION_NOT_DURABLE")


@dataclass(frozen=True)
class StreamSettings:
    stream_id: str
    batch_records: int
    batches_in_flight: int
    pause_ms: int
    reconnects: int


@dataclass
class StreamSummary:
    stream_id: str
    records: int
    resumed_after: int = 0
    sent: int = 0
    replayed: int = 0
    committed_sequence: int = 0
    chain_head: bytes = bytes(32)


class Streamer:
    """One stream of one provider: the records, their chain as this client computes it, and the receipts."""

    def __init__(self, services: Services, provider_id: str, state: StateFile, checker: ReceiptChecker,
                 settings: StreamSettings, records: Sequence[Record]) -> None:
        self._services, self._provider_id, self._state, self._checker = services, provider_id, state, checker
        self._settings, self._records = settings, records
        self._hashes = chain(provider_id, settings.stream_id, records)
        self.summary = StreamSummary(settings.stream_id, len(records))

    def run(self) -> StreamSummary:
        """Streams to the end, reconnecting after a lost connection (or a retryable refusal) at most `reconnects` times."""
        attempt = 0
        while True:
            try:
                self._session(first=attempt == 0)
                return self.summary
            except (Unreachable, Refused) as error:
                # A database failover (DATABASE_UNAVAILABLE) or a server waiting for its synchronous
                # standby (REPLICATION_NOT_DURABLE) passes; the reopened stream is then checked
                # against what was acknowledged before anything is sent.
                retryable = isinstance(error, Unreachable) or error.reason in RETRYABLE_REASONS or (
                    # Every refusal carries a reason; a status without one is a connection that ended (a server restarting).
                    not error.reason and error.status in (grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN))
                if not retryable or attempt >= self._settings.reconnects:
                    raise
                attempt += 1
                delay_s = min(2 ** attempt, 30)
                log.warning("%s; reconnecting in %d s (%d of %d)", error, delay_s, attempt, self._settings.reconnects)
                time.sleep(delay_s)

    def _check_input_against_state(self) -> None:
        acknowledged = self._state.acknowledged(self._provider_id, self._settings.stream_id)
        if acknowledged is None:
            return
        if acknowledged.sequence >= len(self._hashes) or self._hashes[acknowledged.sequence] != acknowledged.chain_head:
            raise UsageError(
                f"the input is not what {self._state.path} says was acknowledged: the server acknowledged sequence "
                f"{acknowledged.sequence} with head {acknowledged.chain_head.hex()}, and the input has "
                f"{len(self._records)} records" + ("" if acknowledged.sequence >= len(self._hashes)
                                                   else f" whose chain gives {self._hashes[acknowledged.sequence].hex()} there"))

    def _check_resume_point(self, committed: int, head: bytes) -> None:
        acknowledged = self._state.acknowledged(self._provider_id, self._settings.stream_id)
        stream = f"{self._provider_id}/{self._settings.stream_id}"
        if acknowledged is not None and committed < acknowledged.sequence:
            raise EvidenceError(
                f"{stream}: the server reopened the stream at {committed}, behind {acknowledged.sequence}, which it acknowledged "
                f"with a signed receipt: acknowledged records were lost or removed")
        if acknowledged is not None and committed == acknowledged.sequence and head != acknowledged.chain_head:
            raise EvidenceError(f"{stream}: the server's head at {committed} is {head.hex()}, but it acknowledged {acknowledged.chain_head.hex()}")
        if committed >= len(self._hashes):
            raise EvidenceError(f"{stream}: the server holds {committed} records, more than the {len(self._records)} of the input")
        if head != self._hashes[committed]:
            raise EvidenceError(
                f"{stream}: the server's head at {committed} is {head.hex()}, but the chain of the input gives {self._hashes[committed].hex()} "
                f"(either the server holds other records, or the input changed after it was sent)")

    def _batch(self, first: int, last: int):
        ingest = self._services.pb["ingest"]
        batch = ingest.UsageBatch()
        for record in self._records[first - 1:last]:
            message = batch.records.add(
                sequence=record.sequence, job_id=record.job_id, holder_code=record.holder_code, device_model=record.device_model,
                device_count=record.device_count, share_numerator=record.share_numerator, share_denominator=record.share_denominator,
                start_unix_ms=record.start_unix_ms, end_unix_ms=record.end_unix_ms, site=record.site)
            message.device_uuids.extend(record.device_uuids)
            if record.energy_mwh is not None:
                message.energy_mwh = record.energy_mwh
            if record.sm_active_bp is not None:
                message.sm_active_bp = record.sm_active_bp
        return ingest.IngestRequest(batch=batch)

    def _session(self, first: bool) -> None:
        ingest = self._services.pb["ingest"]
        stream_id = self._settings.stream_id
        self._check_input_against_state()
        check_server_still_holds(self._services, self._provider_id, stream_id, self._state.acknowledged(self._provider_id, stream_id))
        requests: queue.Queue = queue.Queue()

        def outgoing() -> Iterator:
            while (item := requests.get()) is not None:
                yield item

        requests.put(ingest.IngestRequest(open=ingest.OpenStream(stream_id=stream_id)))
        call = self._services.ingest_stream(outgoing(), metadata=self._services.metadata)
        try:
            opened = self._next(call, "opened").opened
            committed, head = opened.committed_sequence, opened.chain_head
            self._check_resume_point(committed, head)
            if opened.HasField("receipt"):
                keep_receipt(self._state, self._checker, opened.receipt, self._provider_id, stream_id, committed, head)
            if first:
                self.summary.resumed_after = committed
            self.summary.committed_sequence, self.summary.chain_head = committed, head
            log.info("opened %s at committed sequence %d (head %s)", stream_id, committed, head.hex())
            batch_records = max(1, min(self._settings.batch_records, opened.batch_records_max or self._settings.batch_records))
            next_sequence, in_flight = committed + 1, collections.deque()
            while next_sequence <= len(self._records) or in_flight:
                while next_sequence <= len(self._records) and len(in_flight) < self._settings.batches_in_flight:
                    last = min(len(self._records), next_sequence + batch_records - 1)
                    requests.put(self._batch(next_sequence, last))
                    in_flight.append((next_sequence, last))
                    self.summary.sent += last - next_sequence + 1
                    next_sequence = last + 1
                ack = self._next(call, "ack").ack
                self._accept(ack, *in_flight.popleft())
                if self._settings.pause_ms:
                    time.sleep(self._settings.pause_ms / 1000)
            requests.put(None)
            for extra in call:
                raise EvidenceError(f"the server sent {extra.WhichOneof('kind')} after the last acknowledgement")
        except grpc.RpcError as error:
            raise error_from(error) from None
        finally:
            requests.put(None)
            call.cancel()

    @staticmethod
    def _next(call, kind: str):
        try:
            response = next(call)
        except StopIteration:
            raise Unreachable(f"the server ended the stream while the agent waited for '{kind}'") from None
        if response.WhichOneof("kind") != kind:
            raise EvidenceError(f"the server answered '{response.WhichOneof('kind')}' where '{kind}' was due")
        return response

    def _accept(self, ack, first: int, last: int) -> None:
        stream_id = self._settings.stream_id
        if (ack.first_sequence, ack.last_sequence, ack.committed_sequence) != (first, last, last):
            raise EvidenceError(
                f"the acknowledgement covers {ack.first_sequence}..{ack.last_sequence} (committed {ack.committed_sequence}), "
                f"but the batch sent was {first}..{last}")
        if ack.chain_head != self._hashes[last]:
            raise EvidenceError(
                f"{self._provider_id}/{stream_id}: the server acknowledged head {ack.chain_head.hex()} at {last}, "
                f"but the chain this agent computed gives {self._hashes[last].hex()}")
        keep_receipt(self._state, self._checker, ack.receipt, self._provider_id, stream_id, last, ack.chain_head)
        self.summary.replayed += ack.replayed_records
        self.summary.committed_sequence, self.summary.chain_head = last, ack.chain_head
        log.info("acknowledged %s %d..%d, head %s", stream_id, first, last, ack.chain_head.hex())
