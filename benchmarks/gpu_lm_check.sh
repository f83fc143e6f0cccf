#!/usr/bin/env bash
# The language-model side on a CUDA machine (issue 23, part 7), in under 5 minutes: what CI (no GPU) cannot run.
#   1. the card, torch and CUDA as torch sees them;
#   2. the device tests (tests/test_lm_devices.py, whose CUDA tests CI skips) with -s, so each CUDA run prints its
#      loss, loss scale and peak GPU memory; then the precision, model and loss tests;
#   3. short CUDA runs through the command line (GRPO in bf16 with gradient checkpointing, PPO in fp16, SFT in bf16),
#      each followed by its last metrics row: device, losses, loss scale and skipped steps, peak GPU memory.
# Usage, from the repository root, in an environment with pgrad[lm] and a CUDA torch:
#   bash benchmarks/gpu_lm_check.sh [OUT_DIR]        (PYTHON=... picks the interpreter; default: python)
#   DEVICE=cpu bash benchmarks/gpu_lm_check.sh       a dry run of the script itself on a CPU (fp16 is refused there)
# Record what it prints in RESULTS.md (or the issue) with the card's name.
set -euo pipefail
PYTHON=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
export DEVICE
OUT=${1:-${OUT:-$(mktemp -d)}}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)

echo "== 1. the machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
"$PYTHON" - <<'EOF'
import os
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}")
if os.environ["DEVICE"] == "cpu":
    raise SystemExit(0)
if not torch.cuda.is_available():
    raise SystemExit("no CUDA here: this script is for a GPU machine")
print(f"device 0: {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
EOF

echo "== 2. the tests (CUDA ones print one line each)"
timeout 200 "$PYTHON" -m pytest -q -s -p no:cacheprovider tests/test_lm_devices.py 2>&1 | grep -E "^GPU |passed|failed|error|Error" || true
timeout 90 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_lm_precision.py tests/test_lm_model.py \
    tests/test_lm_losses.py tests/test_lm_grpo.py 2>&1 | tail -3 || true

echo "== 3. short CUDA runs through the command line"
run() {  # NAME COMMAND... : one run, then its last metrics row
    local name=$1
    shift
    if ! timeout 60 "$PYTHON" -m pgrad lm "$@" --quiet --seed 1 --run-dir "$OUT/$name" --overwrite >"$OUT/$name.log" 2>&1; then
        echo "$name: FAILED"; tail -5 "$OUT/$name.log"; return 0
    fi
    "$PYTHON" - "$OUT/$name" "$name" <<'EOF'
import json, sys
from pathlib import Path
rows = [json.loads(line) for line in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines()]
last = rows[-1]
keys = [k for k in last if k.startswith("train/") and ("loss" in k or "nll" in k or "scale" in k or "skipped" in k)]
keys += [k for k in ("lm/rm_score", "lm/kl", "diagnostics/nonfinite_steps", "perf/cuda_peak_memory_mb",
                     "perf/seconds_per_update", "eval/sft_nll") if k in last]
print(f"{sys.argv[2]}: step {last['step']}, " + ", ".join(f"{k} {last[k]:.4g}" for k in keys))
EOF
}
common=(--set "run.device=$DEVICE" --set checkpoint_every=100000)
run grpo_bf16_gc grpo "${common[@]}" --total-steps 256 --set precision=bf16 --set gradient_checkpointing=true \
    --set eval_every=0
run ppo_fp16 ppo "${common[@]}" --total-steps 256 --set precision=fp16 --set eval_every=0
run ppo_fp32 ppo "${common[@]}" --total-steps 256 --set eval_every=0
run sft_bf16 sft "${common[@]}" --total-steps 1024 --set precision=bf16 --set eval_every=512 --set eval_prompts=32

echo "== done in $(( $(date +%s) - started )) s; run folders in $OUT"
