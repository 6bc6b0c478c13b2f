#!/usr/bin/env bash
# Reproduce a WMT14 EN-DE row of Table 2: prepare → train → average → translate → score.
# Usage: bash recipes/wmt14-en-de.sh [base|big]   (extra training options in NMT_TRAIN_ARGS, e.g. "--gpus 1")
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:-base}
case "$ARCH" in base) PAPER=27.3; LAST=5 ;; big) PAPER=28.4; LAST=20 ;; *) echo "usage: $0 [base|big]" >&2; exit 2 ;; esac
DATA=data-bin/wmt14-en-de
RUN=runs/wmt14-en-de-$ARCH

nmt prepare wmt14-en-de --dest "$DATA" ${NMT_PREPARE_ARGS:-}
# shellcheck disable=SC2086
nmt train --recipe recipes/wmt14-en-de-$ARCH.toml --save-dir "$RUN" ${NMT_TRAIN_ARGS:-}
nmt average "$RUN" --last "$LAST" -o "$RUN/averaged.pt"
for TEST in test test-filtered; do
  nmt translate "$RUN/averaged.pt" --input "$DATA/$TEST.en" --output "$RUN/$TEST.hyp" \
    --beam 4 --lenpen 0.6 --penalty gnmt --max-len-a 1 --max-len-b 50 ${NMT_TRANSLATE_ARGS:-}
  echo "== newstest2014 ($TEST, $(wc -l < "$DATA/$TEST.en") sentences); the paper reports $PAPER (tokenized BLEU)"
  nmt score --ref "$DATA/$TEST.de" --hyp "$RUN/$TEST.hyp" --tokenized --lang de | tee "$RUN/$TEST.score"
done
