#!/usr/bin/env bash
# Data preparation for LibriSpeech (960 h) with MUSAN noise, as icefall users know it.
#
#   ./prepare.sh                                  # all stages (downloads ~60 GB)
#   ./prepare.sh --stage 3 --stop-stage 4 --nj 8
#   ./prepare.sh --dl-dir /data/corpora           # with LibriSpeech/ and musan/ already there
#   ./prepare.sh --mini-libri true                # mini LibriSpeech (train-clean-5, dev-clean-2)
#
# Stages (each skipped when already done):
#   0  download LibriSpeech (all 7 parts, or the 2 mini parts with --mini-libri true) and MUSAN
#      into $dl_dir unless present (or symlink copies to $dl_dir/LibriSpeech and $dl_dir/musan)
#   1  lhotse manifests data/manifests/librispeech_{recordings,supervisions}_{part}.jsonl.gz for
#      every part found in $dl_dir/LibriSpeech
#   2  MUSAN manifests data/manifests/musan_recordings_{music,speech,noise}.jsonl.gz
#   3  80-dim fbank + cut manifests data/fbank/librispeech_cuts_{part}.jsonl.gz for the parts of
#      stage 1, x0.9/x1.1 speed perturbation of the train parts (unless --perturb-speed false),
#      the shuffled 960 h set librispeech_cuts_train-all-shuf.jsonl.gz, manifest validation
#   4  MUSAN features data/fbank/musan_cuts.jsonl.gz (10 s windows longer than 5 s)
#   5  BPE lang dir data/lang_bpe_${vocab_size} (bpe.model, tokens.txt; --vocab-size 500)

export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
set -eou pipefail

nj=15
stage=0
stop_stage=5
dl_dir=$PWD/download
perturb_speed=true
mini_libri=false
vocab_size=500
help_message="Usage: $0 [--stage N] [--stop-stage M] [--nj N] [--dl-dir DIR]
                 [--perturb-speed true|false] [--mini-libri true|false] [--vocab-size 500]"

. shared/parse_options.sh || exit 1

all_parts=(dev-clean dev-other test-clean test-other train-clean-100 train-clean-360
  train-other-500 dev-clean-2 train-clean-5)
train_parts=(train-clean-100 train-clean-360 train-other-500 train-clean-5)
full_train_parts=(train-clean-100 train-clean-360 train-other-500)

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

log "dl_dir: $dl_dir"

if run_stage 0; then
  log "Stage 0: download data"
  mkdir -p "$dl_dir"
  if [ "$mini_libri" == true ]; then
    if [ ! -d "$dl_dir/LibriSpeech/train-clean-5" ]; then
      lhotse download librispeech --mini "$dl_dir"
    else
      log "Stage 0: $dl_dir/LibriSpeech (mini) is present"
    fi
  elif [ ! -d "$dl_dir/LibriSpeech/train-other-500" ]; then
    lhotse download librispeech --full "$dl_dir"
  else
    log "Stage 0: $dl_dir/LibriSpeech is present"
  fi
  if [ ! -d "$dl_dir/musan" ]; then
    lhotse download musan "$dl_dir"
  else
    log "Stage 0: $dl_dir/musan is present"
  fi
fi

if run_stage 1; then
  log "Stage 1: prepare LibriSpeech manifests"
  mkdir -p data/manifests
  if [ ! -e data/manifests/.librispeech.done ]; then
    lhotse prepare librispeech -j "$nj" "$dl_dir/LibriSpeech" data/manifests
    touch data/manifests/.librispeech.done
  fi
fi

if run_stage 2; then
  log "Stage 2: prepare MUSAN manifests"
  mkdir -p data/manifests
  if [ ! -e data/manifests/.musan.done ]; then
    lhotse prepare musan "$dl_dir/musan" data/manifests
    touch data/manifests/.musan.done
  fi
fi

if run_stage 3; then
  log "Stage 3: compute fbank for LibriSpeech"
  mkdir -p data/fbank
  if [ ! -e data/fbank/.librispeech.done ]; then
    parts=()
    for part in "${all_parts[@]}"; do
      if [ -f "data/manifests/librispeech_recordings_${part}.jsonl.gz" ]; then parts+=("$part"); fi
    done
    if [ ${#parts[@]} -eq 0 ]; then
      log "ERROR: no LibriSpeech manifests in data/manifests; run stage 1 first"
      exit 1
    fi
    shuf_parts=()
    if [ -f data/manifests/librispeech_recordings_train-other-500.jsonl.gz ]; then
      shuf_parts=("${full_train_parts[@]}")
    fi
    python3 -m icefall.data.compute_fbank \
      --manifest-dir data/manifests --output-dir data/fbank --prefix librispeech \
      --parts "${parts[@]}" --perturb-speed-parts "${train_parts[@]}" \
      --perturb-speed "$perturb_speed" --train-all-shuf-parts ${shuf_parts[@]+"${shuf_parts[@]}"} \
      --num-jobs "$nj"
    cut_files=()
    for part in "${parts[@]}"; do
      cut_files+=("data/fbank/librispeech_cuts_${part}.jsonl.gz")
    done
    python3 -m icefall.data.validate_manifest "${cut_files[@]}"
    touch data/fbank/.librispeech.done
  fi
fi

if run_stage 4; then
  log "Stage 4: compute fbank for MUSAN"
  mkdir -p data/fbank
  if [ ! -e data/fbank/.musan.done ]; then
    python3 -m icefall.data.compute_fbank_musan \
      --manifest-dir data/manifests --output-dir data/fbank --num-jobs "$nj"
    touch data/fbank/.musan.done
  fi
fi

if run_stage 5; then
  lang_dir=data/lang_bpe_${vocab_size}
  log "Stage 5: prepare BPE lang dir $lang_dir"
  mkdir -p "$lang_dir"
  if [ ! -f "$lang_dir/transcript_words.txt" ]; then
    log "Generating $lang_dir/transcript_words.txt from the train transcripts"
    train_dirs=()
    for part in "${train_parts[@]}"; do
      if [ -d "$dl_dir/LibriSpeech/$part" ]; then train_dirs+=("$dl_dir/LibriSpeech/$part"); fi
    done
    if [ ${#train_dirs[@]} -eq 0 ]; then
      log "ERROR: no training part under $dl_dir/LibriSpeech; run stage 0 first"
      exit 1
    fi
    find "${train_dirs[@]}" -name "*.trans.txt" -exec cat {} + | cut -d " " -f 2- \
      > "$lang_dir/transcript_words.txt.tmp"
    mv "$lang_dir/transcript_words.txt.tmp" "$lang_dir/transcript_words.txt"
  fi
  python3 -m icefall.data.train_bpe --lang-dir "$lang_dir" --vocab-size "$vocab_size" \
    --transcript "$lang_dir/transcript_words.txt"
fi

log "Done (stages $stage to $stop_stage)"
