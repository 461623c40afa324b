"""Usage records to stream: read from JSON Lines (the schema of rawlog-formats.md) or generated."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from .canonical import Record
from .transport import UsageError

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_PROPERTIES = {"job_id", "holder_code", "account", "device_model", "gres", "device_count", "share_numerator",
               "share_denominator", "start", "end", "site", "device_uuids", "energy_mwh", "sm_active_bp"}


def unix_ms(text: str) -> int:
    """RFC 3339 with a zone to Unix milliseconds, exactly (integer arithmetic, no float)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{text}' is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"'{text}' has no zone (give Z or an offset such as +08:00)")
    elapsed = moment - _EPOCH
    if elapsed % timedelta(milliseconds=1):
        raise ValueError(f"'{text}' is finer than a millisecond, which the canonical encoding cannot carry")
    return elapsed // timedelta(milliseconds=1)


def _integer(line: dict[str, Any], name: str, default: Optional[int] = None) -> int:
    value = line.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


def _text(line: dict[str, Any], name: str) -> str:
    value = line.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _mapped(line: dict[str, Any], direct: str, mapped: str, table: dict[str, str], table_name: str) -> str:
    if (direct in line) == (mapped in line):
        raise ValueError(f"give exactly one of {direct} and {mapped}")
    if direct in line:
        return _text(line, direct)
    key = _text(line, mapped)
    if key not in table:
        raise ValueError(f"{mapped} '{key}' is not in the mapping's {table_name}")
    return table[key]


def read_jsonl(path: Path, mapping: dict[str, Any]) -> list[Record]:
    """Every non-blank line is the next sequence number, from 1; a bad line stops the agent before it sends anything."""
    records: list[Record] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            if not isinstance(line, dict):
                raise ValueError("a line must be a JSON object")
            unknown = sorted(set(line) - _PROPERTIES)
            if unknown:
                raise ValueError(f"unknown properties {', '.join(unknown)}")
            uuids = line.get("device_uuids", [])
            if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
                raise ValueError("device_uuids must be an array of strings")
            energy = line.get("energy_mwh")
            sm_active = line.get("sm_active_bp")
            record = Record(
                sequence=len(records) + 1,
                job_id=_text(line, "job_id"),
                holder_code=_mapped(line, "holder_code", "account", mapping.get("accountHolders", {}), "accountHolders"),
                device_model=_mapped(line, "device_model", "gres", mapping.get("gresModels", {}), "gresModels"),
                device_count=_integer(line, "device_count"),
                share_numerator=_integer(line, "share_numerator", 1),
                share_denominator=_integer(line, "share_denominator", 1),
                start_unix_ms=unix_ms(_text(line, "start")),
                end_unix_ms=unix_ms(_text(line, "end")),
                site=_text(line, "site") if "site" in line else mapping.get("site", ""),
                device_uuids=tuple(uuids),
                energy_mwh=None if energy is None else _integer(line, "energy_mwh"),
                sm_active_bp=None if sm_active is None else _integer(line, "sm_active_bp"),
            )
            record.job_id.encode("utf-8")
            for text_field in (record.holder_code, record.site, *record.device_uuids):
                text_field.encode("utf-8")
        except (ValueError, UnicodeEncodeError) as error:
            raise UsageError(f"{path}:{number}: {error}") from None
        if not record.site:
            raise UsageError(f"{path}:{number}: no site (give site, or one in the mapping)")
        records.append(record)
    return records


def generate(count: int, start_ms: int, holder_code: str, device_model: str, device_count: int, site: str) -> list[Record]:
    """`count` back-to-back five-minute jobs from `start_ms`: the same arguments give the same records, so a rerun resumes them."""
    five_minutes_ms = 300_000
    return [
        Record(
            sequence=n,
            job_id=f"gen-{n:07d}",
            holder_code=holder_code,
            device_model=device_model,
            device_count=device_count,
            share_numerator=1,
            share_denominator=1,
            start_unix_ms=start_ms + (n - 1) * five_minutes_ms,
            end_unix_ms=start_ms + n * five_minutes_ms,
            site=site,
        )
        for n in range(1, count + 1)
    ]
