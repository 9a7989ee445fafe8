#!/usr/bin/env bash
# bench_nccl_sync.py as run on the lent 2-GPU machine for benchmarks/RESULTS.md:
#   bash benchmarks/gpu_nccl_run.sh [bench_nccl_sync.py flags]
# That machine has torch but neither vLLM nor network. What travels in .gpu/ (ignored by git; how to build it is in
# benchmarks/RESULTS.md): wheels (pydantic, fastapi, uvicorn, openai, pyzmq, ...) and vllm.tar.gz, vLLM 0.31.0's
# pure-Python files with a dist-info. Two fixes make vLLM's NCCL path run from those files, applied in every Python
# process by a sitecustomize written here:
# * empty stand-ins for vLLM's compiled modules (the CUDA platform imports them; the NCCL path uses none of their ops);
# * the machine's NCCL (the one torch 2.11 ships) lacks three symbols vLLM 0.31 binds (ncclCommSuspend, ...), so they
#   are dropped from vLLM's binding list before the first communicator. Without this vLLM's PyNcclCommunicator
#   disables itself and every broadcast silently does nothing (the benchmark checks both the flag and the bytes).
set -uo pipefail
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT" /tmp/site /tmp/shim
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
  || { echo "gpu_nccl_run: installing .gpu/whl failed"; exit 1; }
tar -xzf .gpu/vllm.tar.gz -C /tmp/site || { echo "gpu_nccl_run: unpacking .gpu/vllm.tar.gz failed"; exit 1; }
# upstream trl (a wheel in .gpu/whl: `trl.agents.cli` imports its commands) is a regular package: put this checkout's
# trl/agents inside it
rm -rf /tmp/site/trl/agents && ln -s "$PWD/trl/agents" /tmp/site/trl/agents
NCCL_SO=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))')
cat > /tmp/shim/sitecustomize.py <<'PY'
import ctypes, os, sys, types
for _name in ("vllm._C_stable_libtorch", "vllm._C", "vllm._moe_C"):
    sys.modules.setdefault(_name, types.ModuleType(_name))
if os.environ.get("VLLM_NCCL_SO_PATH"):
    from vllm.distributed.device_communicators.pynccl_wrapper import NCCLLibrary
    _lib = ctypes.CDLL(os.environ["VLLM_NCCL_SO_PATH"])
    NCCLLibrary.exported_functions = [f for f in NCCLLibrary.exported_functions if hasattr(_lib, f.name)]
PY
export PYTHONPATH=/tmp/shim:/tmp/site:$PWD VLLM_NCCL_SO_PATH=$NCCL_SO NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
export TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
python3 -c 'import vllm, torch; from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator; print("vllm", vllm.__version__, "torch", torch.__version__, "gpus", torch.cuda.device_count())' \
  || { echo "gpu_nccl_run: vLLM's NCCL path does not import"; exit 1; }
timeout 540 python3 benchmarks/bench_nccl_sync.py --out "$OUT/nccl_sync.json" --log-dir "$OUT/logs" "$@"
rc=$?
for f in "$OUT"/logs/*.log; do echo "== $f"; tail -n 25 "$f"; done
exit $rc
