#!/usr/bin/env bash
# Builds .gpu/ (ignored by git), what benchmarks/gpu_nccl_run.sh needs on the lent GPU machine (Python 3.12, torch
# 2.11, no vLLM, no network): cp312 wheels of the gateway's and vLLM's pure-Python needs, and vllm.tar.gz, this
# venv's vLLM 0.31.0 without compiled files or kernel tables plus a dist-info (about 20 MB in all).
#   bash benchmarks/gpu_nccl_bundle.sh   (then run the device command with carry: [".gpu"])
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .gpu/whl
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
# trl: trl.agents.cli imports upstream's commands; the rest: fastapi/uvicorn (gateway), vLLM's import chain
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/whl \
  trl==1.16.0 fastapi==0.136.3 starlette==1.10.0 uvicorn==0.54.0 click==8.5.1 annotated-doc==0.0.7 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
  openai==3.57.0 jiter==0.19.0 sniffio==1.3.1 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 h2==4.4.1 \
  hpack==4.2.0 hyperframe==6.1.0 oss-harmony==0.0.11 pybase64==1.5.1 cbor2==6.3.0 pyzmq==27.3.0 msgspec==0.23.0 \
  dill==0.4.1
DIST=$(mktemp -d)
mkdir -p "$DIST/vllm-0.31.0.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.31.0\n' > "$DIST/vllm-0.31.0.dist-info/METADATA"
tar -czf .gpu/vllm.tar.gz --exclude='*.so' --exclude='__pycache__' --exclude='*.cpp' --exclude='*.jpg' \
  --exclude='vllm/model_executor/layers/fused_moe/configs' --exclude='vllm/model_executor/layers/quantization/utils/configs' \
  --exclude='vllm/model_executor/layers/mamba/ops/configs' --exclude='vllm/kernels/helion/configs' \
  --exclude='vllm/entrypoints/serve/instrumentator/static' \
  -C "$SITE" vllm -C "$DIST" vllm-0.31.0.dist-info
rm -rf "$DIST"
du -sh .gpu
