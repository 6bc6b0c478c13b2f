#!/usr/bin/env bash
# Offline quick start: prepare the gettext-en-de corpus from the catalogs installed here, train a tiny
# model, average its last checkpoints, translate the test split, score it, and translate a few lines.
# About five minutes on 2 CPU cores. Re-running skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data-bin/gettext-en-de}
RUN=${RUN:-runs/quickstart}
THREADS=${THREADS:-$(nproc)}

nmt prepare gettext-en-de --dest "$DATA"
nmt train "$DATA" --recipe recipes/gettext-en-de-tiny.toml --save-dir "$RUN" --cpu
nmt average "$RUN" -o "$RUN/averaged.pt"  # the recipe's [average] last = 3
nmt translate "$RUN/averaged.pt" --input "$DATA/test.en" --output "$RUN/test.hyp" --threads "$THREADS"
echo "== test split of gettext-en-de ($(wc -l < "$DATA/test.en") segments)"
nmt score --ref "$DATA/test.de" --hyp "$RUN/test.hyp" --metrics bleu,chrf | tee "$RUN/score.txt"
echo "== a few sentences from stdin (source, tab, translation)"
SENTENCES=("Open the file." "The document could not be saved." "Do you want to quit without saving?")
printf '%s\n' "${SENTENCES[@]}" | nmt translate "$RUN/averaged.pt" --threads "$THREADS" \
  | paste <(printf '%s\n' "${SENTENCES[@]}") -
