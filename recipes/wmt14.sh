#!/usr/bin/env bash
# Reproduce a WMT14 row of Table 2: prepare → train → average → translate → score.
# Usage: bash recipes/wmt14.sh de|fr [base|big]   (extra training options in NMT_TRAIN_ARGS, e.g. "--gpus 1")
set -euo pipefail
cd "$(dirname "$0")/.."
TGT=${1:?usage: $0 de|fr [base|big]}
ARCH=${2:-base}
# Table 2's figures (tokenized BLEU); EN-FR big is 41.0 in the NIPS version.
case "$TGT-$ARCH" in
  de-base) PAPER=27.3 ;; de-big) PAPER=28.4 ;; fr-base) PAPER=38.1 ;; fr-big) PAPER=41.8 ;;
  *) echo "usage: $0 de|fr [base|big]" >&2; exit 2 ;;
esac
DATA=data-bin/wmt14-en-$TGT
RUN=runs/wmt14-en-$TGT-$ARCH

nmt prepare wmt14-en-$TGT --dest "$DATA" ${NMT_PREPARE_ARGS:-}
# shellcheck disable=SC2086
nmt train --recipe recipes/wmt14-en-$TGT-$ARCH.toml --save-dir "$RUN" ${NMT_TRAIN_ARGS:-}
nmt average "$RUN" -o "$RUN/averaged.pt"  # the recipe's [average] last: 5 (base) or 20 (big)
for TEST in test test-filtered; do
  # The recipe's [decode] settings travel in the checkpoint: beam 4, GNMT penalty α 0.6, output ≤ input + 50.
  # shellcheck disable=SC2086
  nmt translate "$RUN/averaged.pt" --input "$DATA/$TEST.en" --output "$RUN/$TEST.hyp" ${NMT_TRANSLATE_ARGS:-}
  echo "== newstest2014 ($TEST, $(wc -l < "$DATA/$TEST.en") sentences); the paper reports $PAPER (tokenized BLEU)"
  nmt score --ref "$DATA/$TEST.$TGT" --hyp "$RUN/$TEST.hyp" --tokenized --lang $TGT | tee "$RUN/$TEST.score"
done
