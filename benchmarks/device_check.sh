#!/usr/bin/env bash
# One-shot GPU check for a machine lent for a few minutes: the trainer on CUDA, the shared-GPU
# refusal, then benchmarks/gpu.py in the time that is left. Everything lands in $OUT.
#
#   bash benchmarks/device_check.sh --prepare   # here, after the last commit: AG News rows and the
#                                               # commit into .devdata/ (git-ignored)
#   bash benchmarks/device_check.sh             # on the GPU machine (carry .devdata); give the
#                                               # call timeout_s=450: the script stops by 420 s
#   bash benchmarks/device_check.sh --smoke     # anywhere: every step tiny on CPU (CI runs this)
#
# Environment: OUT (result folder; default benchmarks/results/device-check), DEADLINE_S (whole
# script, default 420: with a minute or more of machine start it leaves over 4 minutes of a
# 15-minute device budget, enough to start a second machine), PYTHON (default python3). The
# machine needs torch, numpy, tokenizers, PyYAML, tqdm, matplotlib (and transformers for
# DistilBERT); scalelab runs from src/.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
MODE=${1:-gpu}
PY=${PYTHON:-python3}
OUT=${OUT:-$REPO/benchmarks/results/device-check}
DEADLINE_S=${DEADLINE_S:-420}
START=$(date +%s)

if [ "$MODE" = "--prepare" ]; then
  src=${SHARED_DATA:-$REPO/../shared/data}/ag_news
  [ -f "$src/train.csv.gz" ] || { echo "device_check.sh: no $src/train.csv.gz" >&2; exit 2; }
  mkdir -p .devdata/ag_news && cp "$src"/train.csv.gz "$src"/test.csv.gz .devdata/ag_news/
  grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo '/.devdata/' >>.git/info/exclude
  # the device's copy of the tree has no .git: results record this commit instead
  commit=$(git rev-parse HEAD)
  [ -n "$(git status --porcelain --untracked-files=no)" ] && commit="$commit-dirty"
  echo "$commit" >.devdata/COMMIT
  echo "copied $src to .devdata/ag_news, commit $commit (carry .devdata to the device)"
  exit 0
fi
case "$MODE" in gpu | --smoke) ;; *) echo "device_check.sh: unknown mode $MODE" >&2; exit 2 ;; esac

mkdir -p "$OUT"
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export SCALELAB_CACHE=${SCALELAB_CACHE:-/tmp/scalelab-device-cache}
# CUPTI stays with its default teardown (TEARDOWN_CUPTI=0 would keep its hooks attached and slow
# every kernel launch after the first profile); a hang at exit is bounded instead: gpu.py leaves
# with os._exit, and step 2 has its own time limit and is judged by the summary it wrote.
if [ -z "${SCALELAB_GIT_COMMIT:-}" ] && [ -f .devdata/COMMIT ]; then
  SCALELAB_GIT_COMMIT=$(cat .devdata/COMMIT)
  export SCALELAB_GIT_COMMIT
fi
LOG=$OUT/device_check.log
: >"$LOG"
say() { echo "== $* ($(($(date +%s) - START)) s)" | tee -a "$LOG"; }
left() { local s=$((DEADLINE_S - ($(date +%s) - START))); echo $((s > 1 ? s : 1)); }
upto() { local l; l=$(left); echo $((l < $1 ? l : $1)); } # $1 seconds, at most what is left
fails=0

say "1. environment"
if [ "$MODE" = --smoke ]; then
  want=cpu
  train_over=(train.precision=fp32 model.d_model=32 model.num_layers=1 model.num_heads=2
    model.d_ff=64 model.vocab_size=2000 model.max_seq_len=64 data.max_train_samples=512)
else
  want=cuda
  train_over=(train.precision=bf16)
fi
"$PY" - "$want" <<'EOF' 2>&1 | tee -a "$LOG" || exit 1
import sys, torch, numpy, tokenizers, yaml, tqdm, matplotlib  # noqa: F401  scalelab's needs
try:
    import transformers
    hf = transformers.__version__
except ImportError:
    hf = "missing (DistilBERT cases are skipped)"
cuda = torch.cuda.is_available()
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"device {torch.cuda.get_device_name(0) if cuda else 'cpu'}, transformers {hf}")
if sys.argv[1] == "cuda" and not cuda:
    sys.exit("device_check.sh: no CUDA device visible")
EOF

say "2. scalelab train, 1 epoch on the bundled sample, 5 steps profiled (${train_over[*]})"
run_dir=$OUT/train-run
rm -rf "$run_dir"
# capped so that gpu.py, the measurement, keeps most of the deadline; -k: a rank stuck in a CUDA
# call ignores the TERM its stop handler takes
timeout -k 10 "$(upto 150)" "$PY" -m scalelab train --config ag_news_small train.epochs=1 \
  "${train_over[@]}" output.dir="$OUT" output.run_name=train-run output.progress=plain \
  train.save_checkpoint=false train.profile_steps=5 >>"$LOG" 2>&1
rc=$?
# summary.json is the run's last output: present with a timeout (124) = it hung on the way out
if [ "$rc" -eq 0 ] || { [ "$rc" -eq 124 ] && [ -f "$run_dir/summary.json" ]; }; then
  [ "$rc" -eq 124 ] && echo "train: summary written, but the process hung at exit (killed)" |
    tee -a "$LOG"
  cp "$run_dir/summary.json" "$OUT/train-summary.json" 2>/dev/null
  "$PY" - "$OUT/train-summary.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
s = json.load(open(sys.argv[1]))
keys = ("device_name", "precision", "final_val_acc", "samples_per_s", "peak_mem_mb", "timing")
print("train: OK;", json.dumps({k: s.get(k) for k in keys}))
p = s.get("profile") or {}
print("train profile:", json.dumps({k: v for k, v in p.items() if k != "top_host_ops"}))
EOF
else
  echo "train: FAILED (see $LOG)" | tee -a "$LOG"
  fails=$((fails + 1))
fi
rm -rf "$run_dir"

if [ "$MODE" = gpu ]; then
  say "3. two ranks on one GPU must stop with one line"
  if timeout -k 10 "$(upto 60)" "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 \
    -m scalelab train --config ag_news_small train.epochs=1 output.dir=/tmp/dc-share \
    output.progress=none >"$OUT/share.txt" 2>&1; then
    echo "share check: FAILED (two ranks on one GPU trained)" | tee -a "$LOG"
    fails=$((fails + 1))
  elif grep -q "two ranks share one GPU" "$OUT/share.txt"; then
    echo "share check: OK ($(grep -m1 'two ranks share one GPU' "$OUT/share.txt"))" | tee -a "$LOG"
  else
    echo "share check: FAILED (no 'two ranks share one GPU' line; see share.txt)" | tee -a "$LOG"
    fails=$((fails + 1))
  fi
fi

say "4. benchmarks/gpu.py"
bench=(benchmarks/gpu.py --out "$OUT/gpu.json")
[ "$MODE" = --smoke ] && bench+=(--tiny --cache-dir "$SCALELAB_CACHE")
if [ "$MODE" = gpu ]; then
  if [ -d .devdata/ag_news ]; then
    bench+=(--data-dir .devdata)
  else
    echo "WARNING: no .devdata/ag_news (carry .devdata): gpu.py uses the 4,000-row bundled" \
      "sample and records no commit" | tee -a "$LOG"
  fi
fi
# New variants start until 120 s before the deadline; the last one may still run that long.
budget=$(($(left) - 120))
[ "$budget" -lt 30 ] && budget=30
timeout -k 10 "$(left)" "$PY" "${bench[@]}" --budget-s "$budget" 2>&1 | grep --line-buffered -v '^USDT' |
  tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu.py: FAILED or cut short" | tee -a "$LOG"; fails=$((fails + 1)); }

say "done: $fails failed step(s); results in $OUT"
[ "$fails" -eq 0 ]
