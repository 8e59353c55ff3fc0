#!/bin/sh
# The kit's GPU check, as run on a lent CUDA machine (see README "GPU"): the CUDA tests, then the synthesis and
# NegLabel-scoring benchmarks on the GPU and on that machine's CPU. Writes logs to ${OUT:-outputs/gpu_check}.
# Usage: sh benchmarks/gpu_check.sh        (needs the requirements installed, or PYTHONPATH set to them)
set -u
out=${OUT:-outputs/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg PYTHONPATH=".:${PYTHONPATH:-}"
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/device.txt" 2>&1
$py -c "import torch, diffusers, transformers, open_clip; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'open_clip', open_clip.__version__)" >> "$out/device.txt" 2>&1
cat "$out/device.txt"
$py -m pytest -m gpu -s -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log" | grep -v "Loading"
rc=$?
for dev in cuda cpu; do
  $py benchmarks/synthesis_cost.py --n 64 --batch-size 32 --device $dev 2>&1 | grep -v "Loading"
  $py benchmarks/neglabel_scoring.py --device $dev 2>&1
done | tee "$out/benchmarks.log"
exit $rc
