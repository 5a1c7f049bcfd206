#!/usr/bin/env bash
# One-shot CUDA run of rsdml's speed benchmarks (bench_train, bench_embed, bench_epoch), rsdml
# train + embed on CUDA, and bench_train with --compile. Give it 9 minutes on one H200: the
# last run reached its final step (--compile, the first to go if time is short) after 393 s,
# including 150 s of a CLI step that then stalled (since fixed) and 11 s of synthetic data.
#
#   bash benchmarks/gpu_bench.sh [OUT_DIR]      # default: $OUT, else benchmarks/results-gpu
#
# Writes OUT_DIR/bench_{train,embed,epoch}.json and bench_train_compile.json (one JSON object
# each), logs.txt (every benchmark's progress log), env.txt (GPU, driver, /dev/shm, packages),
# cli_cuda.txt (rsdml train + embed on CUDA end to end) and summary.txt (the key ratios): at
# most 8 files, what the device tool brings back.
# Data: $RSDML_BENCH_DATA, else ../shared/data/AID, else (the GPU machine does not receive
# ../shared) 10,000 synthetic 150x150 JPEGs in 30 classes written to /tmp first; the JSON's
# setup.data says which was used. Python packages the GPU image lacks (faiss-cpu,
# pytorch-metric-learning) are installed from wheels in .whl/ when that folder exists
# (see docs/benchmarks.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/results-gpu}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
start=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/rsdml-site .whl/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/rsdml-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  nproc; free -g | head -2; df -h /dev/shm /tmp 2>&1
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
} >"$OUT_DIR/env.txt" 2>&1

if ! "$PY" -c "import torch, faiss, pytorch_metric_learning, rsdml.training.runner
assert torch.cuda.is_available(), 'no CUDA GPU visible'" 2>>"$OUT_DIR/env.txt"; then
  echo "rsdml cannot be imported with CUDA here (see $OUT_DIR/env.txt); carry .whl (docs/benchmarks.md)"
  exit 1
fi

DATA="${RSDML_BENCH_DATA:-../shared/data/AID}"
if [ ! -d "$DATA" ]; then
  DATA=/tmp/rsdml-synthetic-aid
  echo "no real data set here; writing synthetic JPEGs to $DATA"
  "$PY" benchmarks/_common.py synth "$DATA" --n 10000 --classes 30 --size 150 || exit 1
fi

status=0
bench() {  # bench NAME[:OUTPUT] LIMIT_S ARGS...
  local name=${1%%:*} out=${1#*:} limit=$2; shift 2
  echo "== $out ($(($(date +%s) - start))s elapsed)"
  timeout "$limit" "$PY" "benchmarks/$name.py" --device cuda --data "$DATA" "$@" \
    >"$OUT_DIR/$out.json" 2>"$OUT_DIR/$out.log"
  local rc=$?
  [ "$rc" -eq 0 ] || { echo "$out failed (exit $rc); last lines of its log:"; tail -5 "$OUT_DIR/$out.log"; status=1; }
  # One log file for all: the device tool brings back at most 8 files.
  { echo "===== $out (exit $rc)"; cat "$OUT_DIR/$out.log"; } >>"$OUT_DIR/logs.txt" && rm -f "$OUT_DIR/$out.log"
}

bench bench_train 130 --sizes 64 128 256 --steps 30 --warmup 5
bench bench_embed 75 --sizes 128 256 --batch 1024
bench bench_epoch 120 --size 256

# The command line end to end on CUDA: train (bf16, channels_last, torch.compile), the report,
# then embed with the trained run.
echo "== rsdml train + embed on CUDA ($(($(date +%s) - start))s elapsed)"
{
  timeout 150 "$PY" -m rsdml train --data "$DATA" --out /tmp/rsdml-cuda-run --device cuda \
    --pretrained none --image-size 128 --epochs 1 --compile --quiet \
    --cache-dir /tmp/rsdml-cli-cache \
    && timeout 60 "$PY" -m rsdml embed "$DATA" --run /tmp/rsdml-cuda-run \
         --out /tmp/rsdml-cuda-emb.npz --device cuda --quiet \
    && "$PY" -c "import numpy as np; z = np.load('/tmp/rsdml-cuda-emb.npz'); print('embed', {k: z[k].shape for k in z.files})" \
    && ls /tmp/rsdml-cuda-run && cat /tmp/rsdml-cuda-run/final_metrics.json
} >"$OUT_DIR/cli_cuda.txt" 2>&1 || { echo "CLI on CUDA failed; see cli_cuda.txt"; tail -5 "$OUT_DIR/cli_cuda.txt"; status=1; }

# DDP's overhead on one GPU: the training step through torchrun with 1 rank (DDP, the gathered
# global batch) against the plain process; its JSON goes into summary.txt (8 files at most).
echo "== bench_ddp ($(($(date +%s) - start))s elapsed)"
timeout 100 "$PY" benchmarks/bench_ddp.py --device cuda --configs plain ddp1 --size 128 \
  --batch 128 --steps 30 --warmup 5 --images 2048 >/tmp/rsdml-bench-ddp.json \
  2> >(sed 's/^/[bench_ddp] /' >>"$OUT_DIR/logs.txt") || { echo "bench_ddp failed"; status=1; }

# Last (the longest): the training step with --compile (the model compiled in the untimed
# warm-up).
bench bench_train:bench_train_compile 170 --sizes 128 256 --steps 30 --warmup 8 --parts ab --compile

"$PY" - "$OUT_DIR" >"$OUT_DIR/summary.txt" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
t, e, p = load("bench_train"), load("bench_embed"), load("bench_epoch")
tc = load("bench_train_compile")
if t:
    print("device:", t["machine"].get("gpu"), "| data:", t["setup"]["data"])
for label, tt in (("train", t), ("train --compile", tc)):
    for s, r in (tt or {}).get("sizes", {}).items():
        ips = {k[0]: r[k]["images_per_s"] for k in r if isinstance(r[k], dict) and "images_per_s" in r[k]}
        print(f"{label} {s}px images/s {ips}  b/a {r.get('ratio_b_over_a')} (target >= 0.8)  b/c {r.get('ratio_b_over_c')}")
if e:
    for s, r in e["sizes"].items():
        print(f"embed {s}px embed/model {r['ratio_embed_over_model']} ({r.get('precision')})"
              f"  e2e {r.get('end_to_end', {}).get('images_per_s')} images/s")
if p and "ratio_rsdml_over_reference" in p:
    print(f"epoch {p['setup']['size']}px rsdml {p['rsdml']['epoch_seconds']}s vs reference "
          f"{p['reference']['epoch_seconds']}s -> {p['ratio_rsdml_over_reference']} (target <= 0.5); "
          f"vs the same pipeline feeding rsdml's model: {p.get('ratio_rsdml_over_reference_rsdml_model')}")
EOF
{ echo "bench_ddp (torchrun 1 rank vs plain, CUDA):"; cat /tmp/rsdml-bench-ddp.json 2>/dev/null; } >>"$OUT_DIR/summary.txt"
cat "$OUT_DIR/summary.txt"
echo "done in $(($(date +%s) - start))s; JSON in $OUT_DIR"
exit $status
