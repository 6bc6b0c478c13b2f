#!/usr/bin/env bash
# Reproduce a WMT14 EN-DE row of Table 2 (see recipes/wmt14.sh and docs/reproduce.md).
# Usage: bash recipes/wmt14-en-de.sh [base|big]   (extra training options in NMT_TRAIN_ARGS, e.g. "--gpus 1")
exec bash "$(dirname "$0")/wmt14.sh" de "${1:-base}"
