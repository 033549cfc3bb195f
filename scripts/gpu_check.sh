#!/usr/bin/env bash
# Every GPU figure and the CUDA code paths, for a machine with one CUDA GPU:
#
#     bash scripts/gpu_check.sh                 # every section; logs in $OUT or gpu_logs/
#     bash scripts/gpu_check.sh decode sweep    # only these sections
#
# Sections (each step has its own time limit, so a slow or hung step cannot take the others'
# time; the limits of all sections add up to about 13.5 minutes, so split a run across calls
# where one call may take 10 minutes, e.g. `heads extract torchrun sweep` then the rest):
#   heads     LogisticHead vs scikit-learn on the GPU
#   extract   CIFAR-10-sized extraction at 224 px (VGG19 fc7)
#   torchrun  the same through torchrun on one GPU: a shard and the virtual bank
#   sweep     the whole `fit --heads logreg,mlp` sweep on a 50,000 x 4,096 bank
#   finetune  fine-tune steps at 224 px, in one process and under torchrun (DDP, NCCL)
#   decode    decoding rates (PIL, tensor, nvJPEG) and a folder of 8,000 400x350 JPEGs
#             extracted with --decode pil, tensor and gpu
#   tests     the test files whose code takes the CUDA branches when a GPU is present
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu_logs}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1  # what a step printed before its time limit still reaches its log
sections=${*:-heads extract torchrun sweep finetune decode tests}
workers=$(python -c "import os; print(min(16, os.cpu_count()))")

step() {  # step NAME LIMIT_SECONDS COMMAND...: run, log to $out/NAME.log, print its tail
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s): $*"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "   exit $rc after $((SECONDS - t0)) s$([ $rc = 124 ] && echo ' (time limit)')"
    tail -n 20 "$out/$name.log" | sed 's/^/   /'
}

heads() {
    step bench_heads 60 python scripts/bench_heads.py --device cuda --skip-mlp --C 1 0.001
}

extract() {
    step bench_extract 90 python scripts/bench_extract.py --device cuda --image-size 224 \
        --n-images 60000 --batch-size 256
}

torchrun_extract() {
    python -c "import numpy as np; r = np.random.default_rng(0); np.savez('$out/cifar_like.npz',
        train_images=r.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8),
        train_labels=r.integers(0, 10, 50000), test_images=r.integers(0, 256,
        (10000, 32, 32, 3), dtype=np.uint8), test_labels=r.integers(0, 10, 10000))"
    step torchrun_extract 90 bash -c "time torchrun --standalone --nproc-per-node 1 -m \
        featurebank extract --dataset npz:$out/cifar_like.npz --weights none --batch-size 256 \
        --out $out/torchrun.h5 --overwrite -q"
}

sweep() {
    step bench_sweep 90 python scripts/bench_sweep.py --device cuda
}

finetune() {
    step bench_finetune 60 python scripts/bench_finetune.py --device cuda --image-size 224 \
        --batch-size 128
    # the same step under torchrun on one GPU: DistributedDataParallel, NCCL, cuda:LOCAL_RANK
    step torchrun_finetune 90 torchrun --standalone --nproc-per-node 1 \
        scripts/bench_finetune.py --device cuda --image-size 224 --batch-size 128
}

decode() {
    step bench_input 60 python scripts/bench_input.py --n 400
    python - "$out/jpegs" <<'PY'
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, "scripts")
from bench_input import jpegs  # noqa: E402


def write(args):
    folder, seed = args
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(jpegs(500, 400, 350, seed=seed)):
        (folder / f"{seed:03d}_{i:04d}.jpg").write_bytes(data)


root = Path(sys.argv[1])
with ProcessPoolExecutor() as pool:  # 8,000 images: 16 x 500, two classes
    list(pool.map(write, [(root / f"class{s % 2}", s) for s in range(16)]))
PY
    for d in pil tensor gpu; do
        step "extract_folder_$d" 90 python scripts/bench_extract.py --device cuda \
            --dataset "folder:$out/jpegs" --image-size 224 --batch-size 256 \
            --workers "$workers" --decode "$d" --skip-tutorial
    done
}

tests() {
    step tests_cuda 150 python -m pytest -q -rfE -p no:cacheprovider tests/test_heads.py \
        tests/test_extract.py tests/test_finetune.py tests/test_transformer.py \
        tests/test_distributed.py tests/test_finetune_distributed.py tests/test_predictor.py \
        tests/test_decode.py
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device',
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE')" 2>&1 | tee -a "$out/gpu.txt"
for s in $sections; do
    case $s in
        torchrun) torchrun_extract ;;
        heads|extract|sweep|finetune|decode|tests) $s ;;
        *) echo "unknown section '$s'; expected: heads extract torchrun sweep finetune decode tests"
           exit 2 ;;
    esac
done
