"""SM activity from dcgm-exporter: DCGM_FI_PROF_SM_ACTIVE per GPU, averaged into whole basis points.

The exporter serves Prometheus text (format 0.0.4) at http://HOST:9400/metrics: `#` lines for HELP
and TYPE, then one sample a line, `NAME{label="value",...} VALUE [TIMESTAMP]`. DCGM_FI_PROF_SM_ACTIVE
is a gauge from 0 to 1 per GPU, labelled gpu="N". Figures are read as Decimal, never float, and a
mean becomes basis points rounded half away from zero, as ingest.proto's sm_active_bp and the
server's own reader do. Samples of MIG instances (a GPU_I_ID label) are not read.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

METRIC = "DCGM_FI_PROF_SM_ACTIVE"
RESPONSE_BYTES_MAX = 8 << 20
TIMEOUT_S = 10

_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})? +(\S+)(?: +-?[0-9]+)?$')
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


class DcgmError(Exception):
    """The exporter gave no usable figures; `unreachable` when it did not answer at all."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def parse_sm_active(text: str) -> dict[int, Decimal]:
    """The fraction (0 to 1) of each GPU index in an exposition; DcgmError when it has none, or is not one."""
    figures: dict[int, Decimal] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        sample = _SAMPLE.match(line)
        if not sample:
            raise DcgmError(f"line {number} is not a Prometheus sample: {line[:80]!r}")
        name, label_text, value = sample.groups()
        labels = dict(_LABEL.findall(label_text or ""))
        if name != METRIC or "GPU_I_ID" in labels:
            continue
        if not labels.get("gpu", "").isdigit():
            raise DcgmError(f"line {number}: {METRIC} has no whole gpu=\"N\" label")
        gpu = int(labels["gpu"])
        try:
            fraction = Decimal(value)
        except InvalidOperation:
            raise DcgmError(f"line {number}: {METRIC} of gpu {gpu} is {value!r}, not a number") from None
        if not fraction.is_finite() or fraction < 0 or fraction > 1:
            raise DcgmError(f"line {number}: {METRIC} of gpu {gpu} is {value}, outside 0 to 1")
        if gpu in figures:
            raise DcgmError(f"line {number}: gpu {gpu} is listed twice")
        figures[gpu] = fraction
    if not figures:
        raise DcgmError(f"the exposition has no {METRIC} sample: the exporter's collector CSV must list it")
    return figures


def read(url: str) -> dict[int, Decimal]:
    """One scrape of the exporter at `url`."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            body = response.read(RESPONSE_BYTES_MAX + 1)
    except urllib.error.HTTPError as error:
        raise DcgmError(f"dcgm-exporter at {url} answered HTTP {error.code} {error.reason}", unreachable=True) from None
    except (urllib.error.URLError, OSError) as error:
        raise DcgmError(f"dcgm-exporter at {url} does not answer ({error})", unreachable=True) from None
    if len(body) > RESPONSE_BYTES_MAX:
        raise DcgmError(f"dcgm-exporter at {url} sent more than {RESPONSE_BYTES_MAX} bytes")
    try:
        return parse_sm_active(body.decode("utf-8"))
    except (DcgmError, UnicodeDecodeError) as error:
        raise DcgmError(f"dcgm-exporter at {url}: {error}") from None


def basis_points(fraction: Decimal) -> int:
    """A fraction from 0 to 1 as whole basis points, rounded half away from zero."""
    return int((fraction * 10_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def sample(url: str, count: int, every_s: float) -> dict[int, int]:
    """`count` scrapes `every_s` apart: each GPU's mean fraction as basis points."""
    sums: dict[int, tuple[Decimal, int]] = {}
    for index in range(count):
        if index:
            time.sleep(every_s)
        for gpu, fraction in read(url).items():
            total, seen = sums.get(gpu, (Decimal(0), 0))
            sums[gpu] = (total + fraction, seen + 1)
    return {gpu: basis_points(total / seen) for gpu, (total, seen) in sorted(sums.items())}


def mean_bp(gpu_bp: dict[int, int], gpus: list[int]) -> int:
    """The mean of some GPUs' basis points, rounded half away from zero."""
    values = [gpu_bp[gpu] for gpu in gpus]
    return (2 * sum(values) + len(values)) // (2 * len(values))
