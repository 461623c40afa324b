"""The agent's local evidence: per stream, the last mark and head the server acknowledged with a receipt."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .transport import UsageError

STATE_FORMAT = 1


@dataclass(frozen=True)
class Acknowledged:
    """The furthest point of one stream that a verified receipt covers."""

    sequence: int
    chain_head: bytes


class StateFile:
    """`state.json` in the state folder, rewritten whole (write, fsync, rename) after every receipt."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "state.json"
        self.receipts = folder / "receipts.jsonl"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {"format": STATE_FORMAT, "streams": {}}
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot read the state in {self.path}: {error}") from None
        if self._data.get("format") != STATE_FORMAT or not isinstance(self._data.get("streams"), dict):
            raise UsageError(f"{self.path} is not a state file of this agent (format {STATE_FORMAT})")

    @staticmethod
    def _key(provider_id: str, stream_id: str) -> str:
        return f"{provider_id}/{stream_id}"

    def acknowledged(self, provider_id: str, stream_id: str) -> Optional[Acknowledged]:
        entry = self._data["streams"].get(self._key(provider_id, stream_id))
        if entry is None:
            return None
        try:
            return Acknowledged(int(entry["committed_sequence"]), bytes.fromhex(entry["chain_head"]))
        except (KeyError, ValueError) as error:
            raise UsageError(f"{self.path}: the entry of {self._key(provider_id, stream_id)} is malformed ({error})") from None

    def save(self, provider_id: str, stream_id: str, acknowledged: Acknowledged, committed_at_ms: int) -> None:
        self._data["streams"][self._key(provider_id, stream_id)] = {
            "committed_sequence": acknowledged.sequence,
            "chain_head": acknowledged.chain_head.hex(),
            "receipt_committed_at_ms": committed_at_ms,
        }
        scratch = self.path.with_suffix(".json.tmp")
        with scratch.open("w", encoding="utf-8") as file:
            json.dump(self._data, file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(scratch, self.path)
