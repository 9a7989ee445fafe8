#!/usr/bin/env bash
# The GPU benchmarks as run on the lent machine for benchmarks/RESULTS.md, one command each:
#   bash benchmarks/gpu_run.sh single   # 1 GPU per job: bench_trainer (0.6B on GPU 0, 1.7B on GPU 1), weight export
#   bash benchmarks/gpu_run.sh pairs    # ours vs upstream only, alternating, 2 rounds (0.6B on GPU 0, 1.7B on GPU 1)
#   bash benchmarks/gpu_run.sh lora-nogc  # the LoRA rows without checkpointing (the single run's deadline cut them)
#   bash benchmarks/gpu_run.sh trim     # 1 GPU: ours vs upstream vs ours trimmed (trl.agents.padding), 2 rounds;
#                                       # MODEL=1.7b for the larger model (default 0.6b)
#   bash benchmarks/gpu_run.sh multi    # 2 GPUs: grpo.py --replay under DDP / ZeRO-2 / ZeRO-3, ZeRO-3 export
# The machine has torch, transformers, peft and accelerate but no network: the other packages come as wheels in
# .whl/ (trl 1.16, datasets, liger-kernel, deepspeed and their missing dependencies; see RESULTS.md), and this
# checkout's trl/agents is copied next to the installed trl. The target's path must contain `site-packages`: dill
# (datasets' fingerprints) pickles modules found elsewhere by value and fails on pyarrow (`Can't pickle MonthDayNano`).
# Logs and JSON go to $OUT (default /tmp/bench-out).
set -uo pipefail
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu/site-packages .whl/*.whl \
  || { echo "gpu_run: installing the wheels in .whl/ failed"; exit 1; }
export PYTHONPATH=/tmp/gpu/site-packages:$PWD/examples NCCL_NVLS_ENABLE=0 TRL_EXPERIMENTAL_SILENCE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
rm -rf /tmp/gpu/site-packages/trl/agents && cp -r trl/agents /tmp/gpu/site-packages/trl/agents
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY' || { echo "gpu_run: the software check failed"; exit 1; }
import importlib
for name in ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "pyarrow", "dill"):
    module = importlib.import_module(name)
    print(name, getattr(module, "__version__", "?"), end="; ")
for name in ("liger_kernel", "deepspeed"):  # needed by the Liger rows and the multi run only
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"), end="; ")
    except ImportError:
        print(name, "missing", end="; ")
import torch, trl.agents.replay
print("\ncuda devices:", torch.cuda.device_count())
PY
command -v git >/dev/null || echo "gpu_run: no git on this machine (the multi run builds the toy suite with it)"
case "${1:-}" in
  single)
    ( CUDA_VISIBLE_DEVICES=0 python3 benchmarks/bench_trainer.py --models 0.6b --deadline 300 --variant-timeout 120 \
        --out "$OUT/trainer-0.6b.json" > "$OUT/trainer-0.6b.log" 2>&1
      CUDA_VISIBLE_DEVICES=0 python3 benchmarks/bench_weight_export.py --out "$OUT/export.json" > "$OUT/export.log" 2>&1 ) &
    CUDA_VISIBLE_DEVICES=1 python3 benchmarks/bench_trainer.py --models 1.7b --deadline 300 --variant-timeout 120 \
      --out "$OUT/trainer-1.7b.json" > "$OUT/trainer-1.7b.log" 2>&1 &
    wait
    for f in "$OUT"/trainer-0.6b.log "$OUT"/trainer-1.7b.log "$OUT"/export.log; do echo "== $f"; tail -n 22 "$f"; done
    ;;
  trim)
    model=${MODEL:-0.6b}
    CUDA_VISIBLE_DEVICES=0 python3 benchmarks/bench_trainer.py --models $model --variants trimpairs,fullonly --rounds 2 \
      --steps 4 --variant-timeout 240 --out "$OUT/trim-$model.json" > "$OUT/trim-$model.log" 2>&1
    tail -n 16 "$OUT/trim-$model.log"
    ;;
  pairs)
    for i in 0 1; do
      model=$([ $i = 0 ] && echo 0.6b || echo 1.7b)
      CUDA_VISIBLE_DEVICES=$i python3 benchmarks/bench_trainer.py --models $model --variants pairs --rounds 2 \
        --steps 4 --deadline 420 --variant-timeout 120 --out "$OUT/pairs-$model.json" > "$OUT/pairs-$model.log" 2>&1 &
    done
    wait
    for f in "$OUT"/pairs-*.log; do echo "== $f"; tail -n 14 "$f"; done
    ;;
  lora-nogc)
    for i in 0 1; do
      model=$([ $i = 0 ] && echo 0.6b || echo 1.7b)
      CUDA_VISIBLE_DEVICES=$i python3 benchmarks/bench_trainer.py --models $model --variants loraonly,nogconly,noupstream \
        --variant-timeout 120 --out "$OUT/lora-nogc-$model.json" > "$OUT/lora-nogc-$model.log" 2>&1 &
    done
    wait
    for f in "$OUT"/lora-nogc-*.log; do echo "== $f"; tail -n 6 "$f"; done
    ;;
  multi)
    python3 benchmarks/bench_multi_gpu.py --out "$OUT/multi.json" 2>&1 | tee "$OUT/multi.log" | tail -n 40
    ;;
  *) echo "usage: bash benchmarks/gpu_run.sh single|pairs|lora-nogc|multi"; exit 2 ;;
esac
