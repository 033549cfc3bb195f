#!/usr/bin/env bash
# Every GPU figure and the CUDA code paths in one run, for a machine with one CUDA GPU:
#
#     bash scripts/gpu_check.sh            # from the repository root; logs in $OUT or gpu_logs/
#
# The benchmarks at their GPU settings (LogisticHead vs scikit-learn, CIFAR-10-sized
# extraction at 224 px, the same through torchrun on one GPU, the whole fit sweep, fine-tune
# steps at 224 px), then the test files whose code takes the CUDA branches when a GPU is
# present (device="auto"). Each step has its own time limit, so a
# slow or hung step cannot take the others' time; about 9 minutes at most in all.
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

step bench_heads 60 python scripts/bench_heads.py --device cuda --skip-mlp --C 1 0.001
step bench_extract 90 python scripts/bench_extract.py --device cuda --image-size 224 \
    --n-images 60000 --batch-size 256
# the distributed path on one GPU: torchrun, a shard, the virtual bank
python -c "import numpy as np; r = np.random.default_rng(0); np.savez('$out/cifar_like.npz',
    train_images=r.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8),
    train_labels=r.integers(0, 10, 50000), test_images=r.integers(0, 256, (10000, 32, 32, 3),
    dtype=np.uint8), test_labels=r.integers(0, 10, 10000))"
step torchrun_extract 90 bash -c "time torchrun --standalone --nproc-per-node 1 -m featurebank \
    extract --dataset npz:$out/cifar_like.npz --weights none --batch-size 256 --out \
    $out/torchrun.h5 --overwrite -q"
step bench_sweep 90 python scripts/bench_sweep.py --device cuda
step bench_finetune 60 python scripts/bench_finetune.py --device cuda --image-size 224 \
    --batch-size 128
step tests_cuda 150 python -m pytest -q -rfE -p no:cacheprovider tests/test_heads.py \
    tests/test_extract.py tests/test_finetune.py tests/test_transformer.py \
    tests/test_distributed.py tests/test_predictor.py
