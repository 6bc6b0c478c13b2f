#!/usr/bin/env bash
# The GPU measurements of docs/performance.md, on one GPU, in one go: training throughput, MFU and peak
# memory for base and big in bf16 (random ids of WMT14's shape, bench/synthetic_data.py), --compile,
# fp16 with the scaler, recovery from running out of memory, torchrun with NCCL, exact resume, and
# nmt translate on the GPU. Figures are the JSON log records of each run; the summary lines start with '=='.
#
#   bash bench/gpu.sh PART OUT [REAL_DATA TEST_PREFIX]
#     PART: mfu (base and big up to the largest --max-tokens that fits, --compile, the output layer and loss
#     alone (bench/output_loss.py), bench/profile_step.py on big; REAL_DATA is then optional: another nmt
#     source tree, e.g. `git worktree add /tmp/before HEAD~3`, whose big run is measured beside this one's),
#     train (throughput, compile, fp16, OOM), torchrun (NCCL, and bench/profile_step.py on base),
#     learn (bf16 against fp32 on REAL_DATA: dev loss after the same updates),
#     resume (exact resume on REAL_DATA) or decode (a base model trained on REAL_DATA for two minutes,
#     then nmt translate on TEST_PREFIX.en, scored against TEST_PREFIX.de)
#     OUT:  a folder for logs and runs
#
#   bash bench/gpu.sh campaign OUT [--smoke]   the three questions only a GPU answers (bench/campaign.py):
#     training speed padded/packed/compiled, a base model trained on gettext-en-de for 5 minutes, decoding
#     against CTranslate2 on the GPU; about 10 minutes. --smoke: the same steps on a CPU, tiny, in about 3.
#   bash bench/gpu.sh packing OUT [--smoke]    question 1 alone: the packed/padded check on the GPU, then
#     big and base padded against packed, eager against --compile, at 32k/64k/128k tokens.
set -uo pipefail
part=$1; out=$2; data=${3:-}; test=${4:-}
mkdir -p "$out"
if [ "$part" = campaign ] || [ "$part" = packing ]; then
  shift 2
  only=(); [ "$part" = packing ] && only=(--only speed)
  python3 bench/campaign.py "$out" "${only[@]}" "$@"
  exit $?
fi
nmt() { python3 -m nmt "$@"; }
# The last log record of a run that has figures in it, reduced to what the summary needs.
last() { python3 - "$1" <<'EOF'
import json, sys
from pathlib import Path
rows = [json.loads(l) for l in Path(sys.argv[1], "train.jsonl").read_text().splitlines()]
figs = [r for r in rows if "tgt_tok_s" in r]
keep = ("update", "tgt_tok_s", "mfu", "gpu_mem_gib", "pad_efficiency", "tgt_tokens_per_update", "skipped", "loss")
print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figs[-1].items() if k in keep}) if figs else "no figures")
EOF
}
quiet=(--validate-every 1000000 --save-every 1000000 --save-minutes 1e9)
syn=$out/wmt-shape
synthetic() {  # random ids of WMT14's shape, written once per OUT
  [ -f "$syn/manifest.json" ] || python3 bench/synthetic_data.py "$syn" --pairs 400000 --vocab 37000
}

if [ "$part" = mfu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  synthetic
  python3 bench/output_loss.py --tokens 32768 --d-model 1024 --vocab 37000 --precision bf16 2>&1 | tee "$out/output-loss.txt"
  # NAME TIMEOUT UPDATES ARGS...: a bf16 run on the synthetic data, figures of its last 25 updates.
  bf16() {
    local name=$1 limit=$2 updates=$3; shift 3
    timeout "$limit" python3 -m nmt train "$syn" --precision bf16 --update-freq 1 --max-updates "$updates" --log-every 25 \
      --save-dir "$out/$name" "${quiet[@]}" "$@" > "$out/$name.log" 2>&1
    echo "== $name (exit $?): $(last "$out/$name")"
  }
  if [ -n "$data" ]; then  # the same big run with another nmt source tree, for a before/after in one run
    here_syn=$(realpath "$syn"); here_out=$(realpath "$out")
    (cd "$data" && timeout 120 python3 -m nmt train "$here_syn" --arch big --precision bf16 --update-freq 1 --max-tokens 32768 \
      --max-updates 50 --log-every 25 --save-dir "$here_out/big-32768-baseline" "${quiet[@]}" > "$here_out/big-32768-baseline.log" 2>&1)
    echo "== big-32768-baseline ($data, exit $?): $(last "$out/big-32768-baseline")"
  fi
  bf16 big-32768 120 50 --arch big --max-tokens 32768
  bf16 big-65536 150 50 --arch big --max-tokens 65536
  bf16 big-131072 180 50 --arch big --max-tokens 131072
  bf16 base-65536 120 50 --arch base --max-tokens 65536
  timeout 120 python3 bench/profile_step.py "$syn" --arch big --precision bf16 --max-tokens 65536 --rows 30 > "$out/profile-big.txt" 2>&1
  grep "per update" "$out/profile-big.txt"
  bf16 big-65536-compile 240 100 --arch big --max-tokens 65536 --compile
fi

if [ "$part" = train ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  synthetic
  for arch in base big; do
    for mt in 16384 32768; do
      run=$out/$arch-bf16-$mt
      timeout 150 python3 -m nmt train "$syn" --arch "$arch" --precision bf16 --max-tokens "$mt" --update-freq 1 --max-updates 240 \
        --log-every 80 --save-dir "$run" "${quiet[@]}" > "$run.log" 2>&1
      echo "== $arch bf16 max_tokens $mt (exit $?): $(last "$run")"
    done
  done
  run=$out/big-bf16-compile
  timeout 300 python3 -m nmt train "$syn" --arch big --precision bf16 --max-tokens 32768 --update-freq 1 --max-updates 400 --compile \
    --log-every 100 --save-dir "$run" "${quiet[@]}" > "$run.log" 2>&1
  echo "== big bf16 --compile max_tokens 32768 (exit $?): $(last "$run")"
  run=$out/base-fp16
  timeout 150 python3 -m nmt train "$syn" --arch base --precision fp16 --max-tokens 16384 --max-updates 240 --log-every 80 \
    --save-dir "$run" "${quiet[@]}" > "$run.log" 2>&1
  echo "== base fp16 + scaler (exit $?): $(last "$run") scale $(python3 -c "import sys; from pathlib import Path; from nmt import checkpoint; print(checkpoint.load(Path(sys.argv[1]))['scaler']['scale'])" "$run/checkpoint_last.pt")"
  run=$out/big-oom
  timeout 150 python3 -m nmt train "$syn" --arch big --precision bf16 --max-tokens 600000 --max-updates 3 --log-every 1 \
    --save-dir "$run" "${quiet[@]}" > "$run.log" 2>&1
  echo "== big, --max-tokens 600000 (exit $?): $(grep -c 'out of GPU memory' "$run.log") out-of-memory skips; $(tail -n 2 "$run.log" | tr '\n' ' ')"
fi

if [ "$part" = torchrun ]; then
  synthetic
  run=$out/base-torchrun
  timeout 120 torchrun --standalone --nproc-per-node 1 -m nmt train "$syn" --arch base --precision bf16 --max-tokens 16384 \
    --max-updates 120 --log-every 40 --save-dir "$run" "${quiet[@]}" > "$run.log" 2>&1
  echo "== torchrun --nproc-per-node 1, NCCL (exit $?): $(last "$run"); $(grep -o 'backend [a-z]*' "$run.log" | head -1)"
  python3 bench/profile_step.py "$syn" --arch base --precision bf16 --max-tokens 32768 --rows 30 > "$out/profile-base.txt" 2>&1
  head -n 1 "$out/profile-base.txt"
fi

if [ "$part" = resume ]; then
  # Exact resume on the GPU: the same run straight twice (how deterministic the kernels are), then cut.
  common=(--arch base --precision bf16 --max-tokens 8192 --log-every 10 --validate-every 1000000 --save-minutes 1e9 --save-every 1000000)
  nmt train "$data" "${common[@]}" --max-updates 40 --save-dir "$out/straight1" > "$out/resume.log" 2>&1
  nmt train "$data" "${common[@]}" --max-updates 40 --save-dir "$out/straight2" >> "$out/resume.log" 2>&1
  nmt train "$data" "${common[@]}" --max-updates 20 --save-dir "$out/cut" >> "$out/resume.log" 2>&1
  nmt train "$data" "${common[@]}" --max-updates 40 --save-dir "$out/cut" >> "$out/resume.log" 2>&1
  python3 - "$out" <<'EOF'
import sys, torch
from pathlib import Path
from nmt import checkpoint
load = lambda d: checkpoint.load(Path(sys.argv[1], d, "checkpoint_last.pt"))["model"]
a, b, c = load("straight1"), load("straight2"), load("cut")
diff = lambda x, y: max((x[k].float() - y[k].float()).abs().max().item() for k in x)
print(f"== resume on the GPU: straight vs straight max |Δ| {diff(a, b):.3g} (identical: {all(torch.equal(a[k], b[k]) for k in a)}); "
      f"straight vs resumed at 20 max |Δ| {diff(a, c):.3g} (identical: {all(torch.equal(a[k], c[k]) for k in a)})")
EOF
fi

if [ "$part" = decode ]; then
  run=$out/base-real
  timeout 200 python3 -m nmt train "$data" --arch base --precision bf16 --max-tokens 16384 --max-time 120 --warmup 1000 --log-every 200 \
    --validate-every 1000000 --save-every 1000000 --save-minutes 1e9 --save-dir "$run" > "$run.log" 2>&1
  echo "== base trained 120 s on $data (exit $?): $(last "$run")"
  for setting in "fp32 bound" "bf16 bound" "bf16 beam" "fp16 bound"; do
    read -r dtype stop <<< "$setting"
    {
      start=$(date +%s.%N)
      nmt translate "$run/checkpoint_last.pt" --device cuda --dtype "$dtype" --stop "$stop" --beam 4 --max-tokens 8192 \
        --input "$test.en" --output "$out/test.$dtype.$stop.hyp" 2> "$out/translate.$dtype.$stop.log"
      status=$?
      secs=$(python3 -c "import time,sys; print(time.time() - float(sys.argv[1]))" "$start")
      lines=$(wc -l < "$test.en")
      echo "== translate base on the GPU, $dtype, --stop $stop (exit $status): $lines lines in $secs s including start-up, $(python3 -m nmt score --hyp "$out/test.$dtype.$stop.hyp" --ref "$test.de" 2>&1 | head -1)"
    }
  done
fi

if [ "$part" = learn ]; then
  # bf16 against fp32: the same 300 updates of base on REAL_DATA, dev loss at the end.
  for p in bf16 fp32; do
    timeout 120 python3 -m nmt train "$data" --arch base --precision $p --max-tokens 8192 --max-updates 300 --warmup 300 \
      --log-every 100 --validate-every 300 --save-every 1000000 --save-minutes 1e9 --save-dir "$out/learn-$p" > "$out/learn-$p.log" 2>&1
    echo "== $p (exit $?): $(grep valid_loss "$out/learn-$p/train.jsonl" | tail -n 1) $(last "$out/learn-$p")"
  done
fi
