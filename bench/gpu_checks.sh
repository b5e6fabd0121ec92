#!/usr/bin/env bash
# Issue 5's GPU checks in one command, for a lent GPU machine (within the device tool's 10-minute
# call: give it timeout_s 600; the steps' limits add up to 9 minutes):
# the GPU-marked tests, then bench/train_throughput.py on the digits, on an 8,000-image MNIST epoch
# and on 60,000 images at batch 1024, and, when models/ and data/prepared/ were carried too,
# bench/inference.py (the registered model on the GPU; its 45 s take the limits past 9 minutes, so
# then shorten the training steps with ARCHS). Each step has its own time limit; a step that fails
# or runs out is reported and the next one still runs.
#
# Prepare here (the machine has no package index and does not see ../shared):
#   uv run python bench/device_kit.py                                   # wheels it lacks -> .whl/
#   mkdir -p .device-data && cp -r ../shared/data/mnist-10k .device-data/  # MNIST -> .device-data/
# Run there, from the repository root, carrying .whl and .device-data:
#   bash bench/gpu_checks.sh
# Logs go to $OUT (the device tool's folder that comes back), else ./gpu-checks/. Without a CUDA
# device everything runs on the CPU: `CHECK_SCALE=tiny ARCHS="mlp cnn" bash bench/gpu_checks.sh`
# tries the script itself (the last step runs out of time there: 60,000 images on a CPU).
set -u -o pipefail

out=${OUT:-gpu-checks}
mkdir -p "$out"
mnist=${MNIST:-.device-data/mnist-10k}
scale=${CHECK_SCALE:-full}  # "tiny": a few epochs each, for trying the script on a CPU
read -r -a archs <<<"${ARCHS:-}"  # e.g. ARCHS="mlp cnn": only these [default: every architecture]

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 MLFLOW_ENABLE_TELEMETRY=false

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
    python3 -c 'import torch, lightning, torchmetrics, mlflow; print(f"torch {torch.__version__}, lightning {lightning.__version__}, torchmetrics {torchmetrics.__version__}, mlflow {mlflow.__version__}, cuda {torch.cuda.is_available()}")'
} 2>&1 | tee "$out/machine.txt"

failed=0
step() {  # step NAME SECONDS COMMAND...: run, keep the whole log, show the figure lines
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    grep -E '^(arch=|bench=)|passed|failed|skipped|error' "$out/$name.log" | tail -20
    if [ "$rc" -ne 0 ]; then
        [ "$rc" -eq 124 ] && echo "!! $name: out of time after ${limit}s; last lines:" \
            || echo "!! $name: exit $rc; last lines:"
        tail -15 "$out/$name.log"
        failed=1
    fi
}

tiny=()
[ "$scale" = tiny ] && tiny=(--epochs 3)
only=()
for arch in "${archs[@]}"; do only+=(--arch "$arch"); done
step gpu-tests 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
step digits 150 python3 bench/train_throughput.py "${tiny[@]}" "${only[@]}"
if [ -d "$mnist" ]; then
    step mnist-8k-epoch 150 python3 bench/train_throughput.py --data "$mnist" --test-fraction 0.1 "${tiny[@]}" "${only[@]}"
    step mnist-60k-batch1024 120 python3 bench/train_throughput.py --data "$mnist" --arch cnn \
        --batch-size 1024 --tile 7 --val-fraction 0.1428572 "${tiny[@]}"
else
    echo "!! $mnist not found: the MNIST steps are skipped (copy ../shared/data/mnist-10k there)"
    failed=1
fi
if [ -f models/cnn/weights.safetensors ] && [ -d data/prepared ]; then
    # Only when models/ and data/prepared/ (from `make run`) were carried too: 45 s more in all.
    step inference 45 python3 bench/inference.py --images 40960 --batch-size 8192 --repeats 3
fi
exit "$failed"
