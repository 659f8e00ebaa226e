#!/usr/bin/env bash
# Data preparation for the embedded tiny corpus: English sentences from Debian packages spoken by
# local TTS voices (see README.md). Nothing is downloaded except Debian packages.
#
#   ./prepare.sh                                # default size, all stages
#   ./prepare.sh --size ci                      # a few minutes of audio (what the tests use)
#   ./prepare.sh --stage 3 --stop-stage 4 --nj 2
#
# Stages (each is skipped when its .done marker exists; a marker from another --size/--seed
# stops the script: remove download/tiny and data/ to start over):
#   0  synthesise the corpus: $dl_dir/tiny/{train,dev,test-clean,test-other} (LibriSpeech layout)
#   1  lhotse manifests data/manifests/tiny_{recordings,supervisions}_{part}.jsonl.gz
#   2  noise for MUSAN-style mixing: lhotse's MUSAN if $dl_dir/musan exists, else locally
#      generated babble + coloured noise as data/manifests/musan_recordings_{speech,noise}.jsonl.gz
#   3  80-dim fbank + cut manifests data/fbank/tiny_cuts_{part}.jsonl.gz (train x0.9/x1.1 speed
#      perturbation unless --perturb-speed false), then manifest validation
#   4  noise features data/fbank/musan_cuts.jsonl.gz
#   5  BPE lang dir data/lang_bpe_256 (bpe.model, tokens.txt) from the train transcripts

export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
set -eou pipefail

stage=0
stop_stage=5
nj=$(nproc)
size=default
seed=42
dl_dir=$PWD/download
perturb_speed=true
opt_in_voices=false
vocab_size=256
help_message="Usage: $0 [--stage N] [--stop-stage M] [--nj N] [--size default|ci] [--seed S]
                 [--dl-dir DIR] [--perturb-speed true|false] [--opt-in-voices true|false]
  --opt-in-voices true also uses the mbrola and SVOX pico voices (Debian contrib/non-free)."

. shared/parse_options.sh || exit 1

# Use the repository's virtualenv when the python3 on PATH lacks the toolkit.
repo=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
if ! python3 -c "import icefall" 2>/dev/null; then
  if [ -x "$repo/.venv/bin/python3" ]; then
    export PATH="$repo/.venv/bin:$PATH"
  else
    echo "$0: python3 cannot import icefall; run tools/install.sh first" >&2
    exit 1
  fi
fi

parts=(train dev test-clean test-other)
lang_dir=data/lang_bpe_${vocab_size}
config="size=$size seed=$seed opt_in_voices=$opt_in_voices"

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

# is_done MARKER: true when the stage that writes MARKER already ran with this $config.
is_done() {
  local marker=$1
  [ -f "$marker" ] || return 1
  if [ "$(cat "$marker")" != "$config" ]; then
    log "ERROR: $marker was made with '$(cat "$marker")', not '$config'."
    log "Remove $dl_dir/tiny and data/ (or use the same options) and run again."
    exit 1
  fi
}

mark_done() { echo "$config" > "$1"; }

run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

if run_stage 0; then
  log "Stage 0: synthesise the tiny corpus ($config) into $dl_dir/tiny"
  marker=$dl_dir/tiny/.stage0.done
  if is_done "$marker"; then
    log "Stage 0: already done"
  else
    extra=()
    [ "$opt_in_voices" == true ] && extra+=(--opt-in-voices)
    python3 ./local/generate_tiny_corpus.py --output-dir "$dl_dir/tiny" \
      --text-cache "$dl_dir/text" --size "$size" --seed "$seed" --nj "$nj" "${extra[@]}"
    mark_done "$marker"
  fi
fi

if run_stage 1; then
  log "Stage 1: lhotse manifests"
  mkdir -p data/manifests
  marker=data/manifests/.tiny.done
  if is_done "$marker"; then
    log "Stage 1: already done"
  else
    python3 ./local/prepare_tiny_manifests.py --corpus-dir "$dl_dir/tiny" \
      --manifest-dir data/manifests --parts "${parts[@]}" --num-jobs "$nj"
    mark_done "$marker"
  fi
fi

if run_stage 2; then
  log "Stage 2: noise set for MUSAN-style mixing"
  mkdir -p data/manifests
  marker=data/manifests/.musan.done
  if is_done "$marker"; then
    log "Stage 2: already done"
  elif [ -d "$dl_dir/musan" ]; then
    log "Stage 2: using MUSAN from $dl_dir/musan"
    lhotse prepare musan "$dl_dir/musan" data/manifests
    mark_done "$marker"
  else
    if [ "$size" == ci ]; then num_babble=6; num_coloured=6; else num_babble=60; num_coloured=30; fi
    python3 ./local/make_noise_set.py \
      --train-recordings data/manifests/tiny_recordings_train.jsonl.gz \
      --audio-dir "$dl_dir/tiny_noise" --manifest-dir data/manifests \
      --num-babble $num_babble --num-coloured $num_coloured --seed "$seed"
    mark_done "$marker"
  fi
fi

if run_stage 3; then
  log "Stage 3: fbank features of the tiny corpus"
  mkdir -p data/fbank
  marker=data/fbank/.tiny.done
  if is_done "$marker"; then
    log "Stage 3: already done"
  else
    python3 -m icefall.data.compute_fbank --manifest-dir data/manifests --output-dir data/fbank \
      --prefix tiny --parts "${parts[@]}" --perturb-speed-parts train \
      --perturb-speed "$perturb_speed" --num-jobs "$nj"
    cuts=()
    for part in "${parts[@]}"; do cuts+=("data/fbank/tiny_cuts_${part}.jsonl.gz"); done
    python3 -m icefall.data.validate_manifest "${cuts[@]}"
    mark_done "$marker"
  fi
fi

if run_stage 4; then
  log "Stage 4: fbank features of the noise set"
  mkdir -p data/fbank
  marker=data/fbank/.musan.done
  if is_done "$marker"; then
    log "Stage 4: already done"
  else
    python3 -m icefall.data.compute_fbank_musan --manifest-dir data/manifests \
      --output-dir data/fbank --num-jobs "$nj"
    mark_done "$marker"
  fi
fi

if run_stage 5; then
  log "Stage 5: BPE lang dir $lang_dir (vocab size $vocab_size)"
  mkdir -p "$lang_dir"
  marker=$lang_dir/.done
  if is_done "$marker"; then
    log "Stage 5: already done"
  else
    if [ ! -f "$lang_dir/transcript_words.txt" ]; then
      find "$dl_dir/tiny/train" -name "*.trans.txt" | sort | xargs cat | cut -d ' ' -f 2- \
        > "$lang_dir/transcript_words.tmp"
      mv "$lang_dir/transcript_words.tmp" "$lang_dir/transcript_words.txt"
    fi
    python3 -m icefall.data.train_bpe --transcript "$lang_dir/transcript_words.txt" \
      --lang-dir "$lang_dir" --vocab-size "$vocab_size"
    mark_done "$marker"
  fi
fi

log "Done: stages $stage..$stop_stage"
