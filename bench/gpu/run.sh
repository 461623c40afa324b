#!/usr/bin/env bash
# Run THERE, on the GPU machine, from the repository root, after bench/gpu/prepare.sh has built
# bench/gpu/out/probe.tar.gz here. Unpacks the probe, runs it on CUDA at full size, measures
# cuBLAS FP16 GEMM and a device-to-device copy through PyTorch in the same run, and compares
# each kernel with the datasheet peak and its target. The last line is
#   RESULT tensor_tflops=.. cublas_tflops=.. packed_fp16_tflops=.. bandwidth_gbps=.. d2d_gbps=..
set -euo pipefail
cd "$(dirname "$0")/../.."

archive=bench/gpu/out/probe.tar.gz
[ -f "$archive" ] || { echo "error: $archive is missing; run bench/gpu/prepare.sh first" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 is required" >&2; exit 1; }

work_dir=$(mktemp -d)
trap 'rm -rf "$work_dir"' EXIT
tar -C "$work_dir" -xzf "$archive"
chmod +x "$work_dir/metering-probe"

# A fixed nonce so runs are comparable; a real attestation uses the server's.
nonce=6d65746572696e672d70726f62652d62656e63682d6e6f6e63652d3030303031
report="$work_dir/report.json"
set +e
"$work_dir/metering-probe" --nonce "$nonce" --device cuda --size full --runs 5 --json "$report"
probe_status=$?
set -e
echo "probe exit status: $probe_status (0 ok, 4 checksum self-check failed)"
[ -f "$report" ] || { echo "error: the probe wrote no report" >&2; exit 1; }

# cuBLAS through torch.matmul on 8192x8192 FP16, and a device-to-device copy, timed with CUDA
# events after a warm-up. The copy counts bytes read plus written, as the probe does.
python3 - "$report" <<'PY'
import json
import sys

import torch

report = json.load(open(sys.argv[1]))
measurements = {m["kernel"]: m for m in report["devices"][0]["measurements"]}


def timed_ms(fn, repeats):
    fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.float16)
b = torch.randn(n, n, device="cuda", dtype=torch.float16)
gemm_iterations = 20


def gemm():
    for _ in range(gemm_iterations):
        torch.matmul(a, b)


cublas_tflops = 2 * n**3 * gemm_iterations / (timed_ms(gemm, 5) / 1e3) / 1e12

copy_bytes = 2 * 1024**3
source = torch.empty(copy_bytes, dtype=torch.uint8, device="cuda")
destination = torch.empty_like(source)
copy_iterations = 10


def copy():
    for _ in range(copy_iterations):
        destination.copy_(source)


d2d_gbps = 2 * copy_bytes * copy_iterations / (timed_ms(copy, 5) / 1e3) / 1e9

# H100 SXM datasheet: dense FP16 tensor, packed FP16 (non-tensor), FP32, HBM3.
peaks = {"tensor-fp16": 989.4, "packed-fp16": 133.8, "fp32-fma": 66.9, "memory-bandwidth": 3350.0}


def rate(kernel):
    m = measurements[kernel]
    return m["medianRate"] / (1e3 if m["rateUnit"] == "mbps" else 1e6)


tensor = rate("tensor-fp16")
packed = rate("packed-fp16")
fp32 = rate("fp32-fma")
bandwidth = rate("memory-bandwidth")
rows = [
    ("tensor-fp16", tensor, "TFLOP/s", f"cuBLAS {cublas_tflops:.1f}", tensor / cublas_tflops, "tensor >= 0.8 x cuBLAS"),
    ("packed-fp16", packed, "TFLOP/s", "-", packed / 133.8, "packed >= 0.8 x 133.8"),
    ("fp32-fma", fp32, "TFLOP/s", "-", fp32 / 66.9, "(no target)"),
    ("memory-bandwidth", bandwidth, "GB/s", f"D2D copy {d2d_gbps:.0f}", bandwidth / d2d_gbps, "bandwidth >= 0.8 x D2D"),
]
print(f"device: {report['devices'][0]['modelName']}")
print(f"{'kernel':<18}{'measured':>12}  {'unit':<8}{'peak':>8}  {'of peak':>8}  {'reference':<18}{'ratio':>7}  target")
for kernel, value, unit, reference, ratio, target in rows:
    peak = peaks[kernel]
    met = "" if target == "(no target)" else ("  met" if ratio >= 0.8 else "  MISSED")
    print(f"{kernel:<18}{value:>12.1f}  {unit:<8}{peak:>8.1f}  {value / peak:>8.1%}  {reference:<18}{ratio:>7.3f}  {target}{met}")
print(
    f"RESULT tensor_tflops={tensor:.1f} cublas_tflops={cublas_tflops:.1f} "
    f"packed_fp16_tflops={packed:.1f} bandwidth_gbps={bandwidth:.0f} d2d_gbps={d2d_gbps:.0f}"
)
PY
