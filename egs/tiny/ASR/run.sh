#!/usr/bin/env bash
# The main job: from a fresh machine to a trained, evaluated, exported and deployed streaming
# Zipformer transducer on the embedded tiny corpus, with no download.
#
#   egs/tiny/ASR/run.sh                     # everything (installs what it needs first)
#   egs/tiny/ASR/run.sh --stage 2 --stop-stage 3
#   egs/tiny/ASR/run.sh --size ci           # a few minutes of audio (what the tests run)
#
# Stages (each is skipped when its .done marker exists in $exp_dir; delete it to redo a stage):
#   0  prepare the tiny corpus (prepare.sh: synthesise, manifests, noise, fbank, BPE)
#   1  train the tiny streaming Zipformer (train.py)
#   2  simulated-streaming decoding with decode.py: greedy, modified beam, fast beam search
#   3  chunk-wise streaming decoding (streaming_decode.py, greedy)
#   4  export.py (pretrained.pt), export.py --jit 1 (cpu_jit.pt), export-onnx.py (fp32 + int8)
#   5  decode the test sets with sherpa-onnx (fp32 and int8) and measure real-time factors
#   6  summary: table on stdout, $exp_dir/summary.json and $exp_dir/summary.png
set -euo pipefail

# The directory run.sh was called from (may be a copy holding symlinks, as in the tests) and the
# repository it belongs to.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
cd "$here"

stage=0
stop_stage=100
size=default
seed=42
nj=$(nproc)
num_epochs=0
avg=1
# The tiny run is short and the model improves fast through its last epoch, so the running
# average over that epoch (icefall's --use-averaged-model 1) is worse than the last weights:
# greedy WER 96.96 against 89.38 on test-clean after the default 2 epochs.
use_averaged_model=0
exp_dir=pruned_transducer_stateless7_streaming/exp
help_message="Usage: $0 [--stage N] [--stop-stage M] [--size default|ci] [--seed S] [--nj N]
                [--num-epochs E (0: the recipe's tiny default)] [--avg A]
                [--use-averaged-model 0|1] [--exp-dir DIR]"

. shared/parse_options.sh || exit 1

python=$("$repo/tools/install.sh")
export PATH="$(dirname "$python"):$PATH"
export PYTHONUNBUFFERED=1

recipe=pruned_transducer_stateless7_streaming
mkdir -p "$exp_dir"
timings="$exp_dir/stage_seconds.json"

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (run.sh) $*"; }

# run_stage N NAME COMMAND...: runs COMMAND once, records its wall time under NAME.
run_stage() {
  local n=$1 name=$2
  shift 2
  if [ "$stage" -gt "$n" ] || [ "$stop_stage" -lt "$n" ]; then
    return 0
  fi
  if [ -f "$exp_dir/.stage-$n-$name.done" ]; then
    log "stage $n ($name): already done, skipping"
    return 0
  fi
  log "stage $n ($name): start"
  local start=$SECONDS
  "$@"
  local seconds=$((SECONDS - start))
  python "$repo/icefall/summary.py" record-time --file "$timings" --stage "$name" --seconds "$seconds"
  touch "$exp_dir/.stage-$n-$name.done"
  log "stage $n ($name): done in ${seconds}s"
}

epoch_args=()
if [ "$num_epochs" -gt 0 ]; then
  epoch_args=(--num-epochs "$num_epochs")
fi

prepare() { ./prepare.sh --size "$size" --seed "$seed" --nj "$nj"; }

train() {
  ./$recipe/train.py --corpus tiny --exp-dir "$exp_dir" --seed "$seed" "${epoch_args[@]}"
}

last_epoch() {
  ls "$exp_dir"/epoch-*.pt | sed 's/.*epoch-\([0-9]*\)\.pt/\1/' | sort -n | tail -1
}

# averaged EPOCH: the --use-averaged-model value for decoding epoch EPOCH (icefall needs
# epoch > avg for the averaged model).
averaged() {
  if [ "$use_averaged_model" = 1 ] && [ "$1" -gt "$avg" ]; then echo 1; else echo 0; fi
}

decode_methods() {
  local epoch method
  epoch=$(last_epoch)
  for method in "$@"; do
    OMP_NUM_THREADS=1 ./$recipe/decode.py --corpus tiny --exp-dir "$exp_dir" \
      --epoch "$epoch" --avg "$avg" \
      --use-averaged-model "$(averaged "$epoch")" \
      --decoding-method "$method"
  done
}

# Two single-threaded decoders side by side (one per core): fast_beam_search takes about as
# long as greedy and modified beam search together.
decode() {
  decode_methods greedy_search modified_beam_search &
  local first=$!
  decode_methods fast_beam_search &
  local second=$!
  local status=0
  wait "$first" || status=1
  wait "$second" || status=1
  return $status
}

streaming_decode() {
  local epoch
  epoch=$(last_epoch)
  ./$recipe/streaming_decode.py --corpus tiny --exp-dir "$exp_dir" --epoch "$epoch" --avg "$avg" \
    --use-averaged-model "$(averaged "$epoch")" \
    --decoding-method greedy_search
}

export_models() {
  local epoch
  epoch=$(last_epoch)
  local avg_args=(--epoch "$epoch" --avg "$avg"
    --use-averaged-model "$(averaged "$epoch")")
  ./$recipe/export.py --corpus tiny --exp-dir "$exp_dir" "${avg_args[@]}"
  ./$recipe/export.py --corpus tiny --exp-dir "$exp_dir" "${avg_args[@]}" --jit 1
  ./$recipe/export-onnx.py --corpus tiny --exp-dir "$exp_dir" "${avg_args[@]}"
}

sherpa_onnx_decode() {
  python "$repo/benchmarks/deploy.py" --corpus tiny --exp-dir "$exp_dir" \
    --output "$exp_dir/deploy.json"
}

summary() {
  python "$repo/icefall/summary.py" summarize --exp-dir "$exp_dir" \
    --test-sets dev test-clean test-other
}

run_stage 0 prepare prepare
run_stage 1 train train
run_stage 2 decode decode
run_stage 3 streaming_decode streaming_decode
run_stage 4 export export_models
run_stage 5 sherpa_onnx sherpa_onnx_decode
if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  summary
fi
