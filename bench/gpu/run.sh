#!/usr/bin/env bash
# Run THERE, on the GPU machine (NVIDIA driver, python3 with PyTorch, no .NET, no network), from
# the repository root, after bench/gpu/prepare.sh has built bench/gpu/out/metering-gpu.tar.gz
# here. Unattended, in one call of at most 8 minutes, on GPU 0 only:
#   1. kernels: the probe on CUDA at full size (unattested), cuBLAS FP16 GEMM and a
#      device-to-device copy through PyTorch, each kernel's TFLOP/s (GB/s) beside the catalog's
#      datasheet peak for the reported model and the issue's targets;
#   2. end to end: a `metering serve` on this machine (embedded PostgreSQL, when the machine has
#      PostgreSQL's server binaries; else "skipped: ..."), an organisation and a provider key, a
#      node key (`metering-probe keygen`), an inventory of this one node, and `metering-probe run`
#      against it: the server-timed challenge, commitment and report, then the validation.
# The last lines are
#   RESULT tensor_tflops=.. cublas_tflops=.. packed_fp16_tflops=.. bandwidth_gbps=.. d2d_gbps=..
#   RESULT e2e=passed|failed|awaiting_review|skipped ...
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

archive=bench/gpu/out/metering-gpu.tar.gz
kernels_seconds_max=210
e2e_seconds_max=240
[ -f "$archive" ] || { echo "error: $archive is missing; run bench/gpu/prepare.sh on a machine with the .NET SDK first" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 is required" >&2; exit 1; }
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader || echo "warning: nvidia-smi failed; the probe will say whether it sees a GPU" >&2

work_dir=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work_dir"
}
trap cleanup EXIT
tar -C "$work_dir" -xzf "$archive"
bin="$work_dir"
# One GPU: the kernels compare with PyTorch's device 0, and the end-to-end node declares one device.
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

# ---------------------------------------------------------------- 1. kernels
report="$work_dir/report.json"
set +e
timeout "$kernels_seconds_max" "$bin/metering-probe" --device cuda --size full --runs 5 --json "$report"
probe_status=$?
set -e
echo "probe exit status: $probe_status (0 ok, 3 no CUDA device, 4 checksum self-check failed, 124 timed out)"
if [ -f "$report" ]; then
python3 - "$report" "$repo" <<'PY'
import glob
import json
import sys

import torch

report = json.load(open(sys.argv[1]))
device = report["devices"][0]
measurements = {m["kernel"]: m for m in device["measurements"]}

# The datasheet peaks are the catalog's, for the model whose probe names match the reported one.
catalog = json.load(open(sorted(glob.glob(f"{sys.argv[2]}/engine/Metering.Engine/Catalog/Data/catalog-*.json"))[-1]))
model = next((d for d in catalog["devices"] if device["modelName"] in d.get("probe", {}).get("deviceNames", [])), None)
if model is None:
    print(f"warning: no catalog model names '{device['modelName']}'; peaks are the H100 SXM's")
    peak = {"tensorFp16Mflops": 989400000, "packedFp16Mflops": 133800000, "fp32Mflops": 66900000, "memoryMbps": 3350000}
else:
    peak = model["probe"]["peak"]


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

# The copy counts bytes read plus written, as the probe does.
copy_bytes = 2 * 1024**3
source = torch.empty(copy_bytes, dtype=torch.uint8, device="cuda")
destination = torch.empty_like(source)
copy_iterations = 10


def copy():
    for _ in range(copy_iterations):
        destination.copy_(source)


d2d_gbps = 2 * copy_bytes * copy_iterations / (timed_ms(copy, 5) / 1e3) / 1e9


def rate(kernel):
    m = measurements[kernel]
    return m["medianRate"] / (1e3 if m["rateUnit"] == "mbps" else 1e6)


tensor, packed, fp32, bandwidth = (rate(k) for k in ("tensor-fp16", "packed-fp16", "fp32-fma", "memory-bandwidth"))
peaks = {
    "tensor-fp16": peak["tensorFp16Mflops"] / 1e6,
    "packed-fp16": peak["packedFp16Mflops"] / 1e6,
    "fp32-fma": peak["fp32Mflops"] / 1e6,
    "memory-bandwidth": peak["memoryMbps"] / 1e3,
}
rows = [
    ("tensor-fp16", tensor, "TFLOP/s", f"cuBLAS {cublas_tflops:.1f}", tensor / cublas_tflops, "tensor >= 0.8 x cuBLAS FP16 GEMM"),
    ("packed-fp16", packed, "TFLOP/s", "-", packed / peaks["packed-fp16"], f"packed >= 0.8 x {peaks['packed-fp16']:.1f}"),
    ("fp32-fma", fp32, "TFLOP/s", "-", fp32 / peaks["fp32-fma"], "(no target)"),
    ("memory-bandwidth", bandwidth, "GB/s", f"D2D copy {d2d_gbps:.0f}", bandwidth / d2d_gbps, "bandwidth >= 0.8 x D2D copy"),
]
paths = {m["kernel"]: m["arithmeticPath"] for m in device["measurements"]}
print(f"device: {device['modelName']} ({device['multiprocessors']} SMs, {device['clockMhz']} MHz); catalog model: {model['key'] if model else 'none'}")
print(f"{'kernel':<18}{'path':<9}{'measured':>10}  {'unit':<8}{'peak':>8}  {'of peak':>8}  {'reference':<18}{'ratio':>7}  target")
for kernel, value, unit, reference, ratio, target in rows:
    met = "" if target == "(no target)" else ("  met" if ratio >= 0.8 else "  MISSED")
    print(f"{kernel:<18}{paths[kernel]:<9}{value:>10.1f}  {unit:<8}{peaks[kernel]:>8.1f}  {value / peaks[kernel]:>8.1%}  {reference:<18}{ratio:>7.3f}  {target}{met}")
print(
    f"RESULT tensor_tflops={tensor:.1f} cublas_tflops={cublas_tflops:.1f} "
    f"packed_fp16_tflops={packed:.1f} bandwidth_gbps={bandwidth:.0f} d2d_gbps={d2d_gbps:.0f}"
)
with open(sys.argv[1] + ".model", "w") as f:
    f.write(model["key"] if model else "")
PY
else
    echo "RESULT kernels=failed probe_status=$probe_status"
fi

# ---------------------------------------------------------------- 2. end to end
e2e_result() { echo "RESULT e2e=$*"; exit 0; }
pg_found=""
for candidate in /usr/lib/postgresql/*/bin; do [ -x "$candidate/initdb" ] && pg_found="$candidate"; done
if [ -z "$pg_found" ] && command -v initdb >/dev/null && command -v pg_ctl >/dev/null && command -v postgres >/dev/null; then pg_found=$(dirname "$(command -v initdb)"); fi
[ -n "$pg_found" ] || e2e_result "skipped reason=no_postgresql: no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or under /usr/lib/postgresql/*/bin, so no server can run here"
model_key=$(cat "$report.model" 2>/dev/null || true)
[ -n "$model_key" ] || e2e_result "skipped reason=no_catalog_model: the probe named no device the catalog knows (see above), so no inventory can declare it"

e2e_deadline=$((SECONDS + e2e_seconds_max))
left() { echo $((e2e_deadline - SECONDS > 1 ? e2e_deadline - SECONDS : 1)); }
metering="$bin/metering"
probe="$bin/metering-probe"
data="$work_dir/pg"
code=914403001922038216
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export METERING_SERVER="http://127.0.0.1:$port"
cd "$work_dir"
timeout "$(left)" "$metering" db migrate --data-dir "$data" >"$work_dir/migrate.log" 2>&1 || { tail -20 "$work_dir/migrate.log"; e2e_result "failed step=migrate"; }
operator_key=$(timeout "$(left)" "$metering" key bootstrap --name gpu-bench --data-dir "$data" 2>>"$work_dir/migrate.log") || { tail -20 "$work_dir/migrate.log"; e2e_result "failed step=key_bootstrap"; }
"$metering" serve --data-dir "$data" --listen "$METERING_SERVER" >"$work_dir/serve.log" 2>&1 &
server_pid=$!
until METERING_API_KEY="$operator_key" "$metering" key list >/dev/null 2>&1; do
    kill -0 "$server_pid" 2>/dev/null || { tail -20 "$work_dir/serve.log"; e2e_result "failed step=serve"; }
    [ "$(left)" -gt 1 ] || e2e_result "failed step=serve_timeout"
    sleep 1
done
export METERING_API_KEY="$operator_key"
"$metering" registry org add --code "$code" --name "GPU bench provider" --legal-form enterprise --district nanshan --established 2020-01-01 \
    || e2e_result "failed step=org_add"
provider_key=$("$metering" key issue --role provider --subject "$code" --label gpu-bench) || e2e_result "failed step=key_issue"
export METERING_API_KEY="$provider_key"
"$probe" keygen --out node.pem > node.pub.pem || e2e_result "failed step=keygen"
# The key is bound to GPU 0's UUID and approved by the operator, as the server requires before it signs anything.
gpu_uuid=$(nvidia-smi --query-gpu=uuid --format=csv,noheader -i 0 2>/dev/null | tr -d ' ') || true
[ -n "$gpu_uuid" ] || e2e_result "skipped reason=no_gpu_uuid: nvidia-smi named no UUID for GPU 0, and a node key is registered with its devices' UUIDs"
"$metering" capacity key register --code "$code" --node gpu-node-0 --public-key node.pub.pem --device-uuid "$gpu_uuid" > register.txt || e2e_result "failed step=key_register"
cat register.txt
fingerprint=$(sed -n 's/.*--fingerprint \([0-9a-f]\{64\}\).*/\1/p' register.txt)
METERING_API_KEY="$operator_key" "$metering" capacity key approve --code "$code" --node gpu-node-0 --version 1 --fingerprint "$fingerprint" \
    --reason "GPU bench: the key made on this machine a moment ago" || e2e_result "failed step=key_approve"
printf '{"nodes": [{"nodeId": "gpu-node-0", "site": "gpu-bench", "deviceModel": "%s", "deviceCount": 1}]}\n' "$model_key" > inventory.json
"$metering" capacity inventory declare --code "$code" --file inventory.json || e2e_result "failed step=declare"
set +e
timeout "$(left)" "$probe" run --code "$code" --node-id gpu-node-0 --key node.pem --device cuda
run_status=$?
set -e
"$metering" capacity validation show --code "$code" || true
case $run_status in
    0) e2e_result "passed model=$model_key" ;;
    2) e2e_result "failed step=probe_run exit=2 reason=device_uuid: the probe could not read the GPU's UUID from the CUDA driver, or it differs from nvidia-smi's (see the run's message)" ;;
    7) e2e_result "awaiting_review model=$model_key (the catalog's probe names do not match the device: see the table)" ;;
    *) e2e_result "failed step=probe_run exit=$run_status model=$model_key (0 passed, 3 no GPU, 4 self-check, 5 refused, 6 node failed, 124 timed out)" ;;
esac
