#!/usr/bin/env bash
# Reproduce a WMT14 EN-FR row of Table 2 (see recipes/wmt14.sh and docs/reproduce.md).
# Usage: bash recipes/wmt14-en-fr.sh [base|big]   (extra training options in NMT_TRAIN_ARGS, e.g. "--gpus 1")
exec bash "$(dirname "$0")/wmt14.sh" fr "${1:-base}"
