#!/usr/bin/env bash
# Every GPU figure and the CUDA code paths in one run, for a machine with one CUDA GPU:
#
#     bash scripts/gpu_check.sh            # from the repository root; logs in $OUT or gpu_logs/
#
# The three benchmarks at their GPU settings (LogisticHead vs scikit-learn, CIFAR-10-sized
# extraction at 224 px, fine-tune steps at 224 px), then the test files whose code takes the
# CUDA branches when a GPU is present (device="auto"). Each step has its own time limit, so a
# slow or hung step cannot take the others' time; about 7.5 minutes at most in all.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu_logs}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1  # what a step printed before its time limit still reaches its log

step() {  # step NAME LIMIT_SECONDS COMMAND...: run, log to $out/NAME.log, print its tail
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s): $*"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "   exit $rc after $((SECONDS - t0)) s$([ $rc = 124 ] && echo ' (time limit)')"
    tail -n 20 "$out/$name.log" | sed 's/^/   /'
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device',
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE')" 2>&1 | tee -a "$out/gpu.txt"

step bench_heads 90 python scripts/bench_heads.py --device cuda --skip-mlp --C 1 0.001
step bench_extract 120 python scripts/bench_extract.py --device cuda --image-size 224 \
    --n-images 60000 --batch-size 256
step bench_finetune 60 python scripts/bench_finetune.py --device cuda --image-size 224 \
    --batch-size 128
step tests_cuda 180 python -m pytest -q -rfE -p no:cacheprovider tests/test_heads.py \
    tests/test_extract.py tests/test_finetune.py tests/test_transformer.py
