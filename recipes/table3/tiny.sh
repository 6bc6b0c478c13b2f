#!/usr/bin/env bash
# Table 3 at the tiny scale on this machine: prepare the offline gettext-en-de corpus if needed, train every
# row of recipes/table3/tiny/ (the same number of updates each), and print the table beside the paper's.
# Each row takes a few minutes on 2 CPU cores; re-running skips finished rows (each resumes or is done).
# Usage: bash recipes/table3/tiny.sh [ROW ...]   (default: every row)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-data-bin/gettext-en-de}
RUNS=${RUNS:-runs/table3-tiny}
[ -f "$DATA/manifest.json" ] || nmt prepare gettext-en-de --dest "$DATA"
ROWS=("$@")
[ ${#ROWS[@]} -gt 0 ] || ROWS=(base A-heads-1 A-heads-4 A-heads-16 A-heads-32 B-dk-16 B-dk-32 C-layers-2 C-layers-4 C-layers-8
  C-dmodel-256 C-dmodel-1024 C-dff-1024 C-dff-4096 D-dropout-0.0 D-dropout-0.2 D-ls-0.0 D-ls-0.2 E-learned-positions big)
for ROW in "${ROWS[@]}"; do
  echo "== $ROW"
  nmt train "$DATA" --recipe "recipes/table3/tiny/$ROW.toml" --save-dir "$RUNS/$ROW" --cpu
done
python recipes/table3/table.py "$RUNS"
