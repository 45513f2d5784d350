#!/usr/bin/env bash
# Run on a lent GPU machine (the device tool), from the repository root, with .whl/ carried
# (benchmarks/device/prepare.sh makes it): about 4-6 minutes once the machine is up.
#
# 1. installs the carried wheels and plasticrl itself (no dependencies: the image's torch is used)
#    into /tmp/site;
# 2. tests/test_device.py on cuda (the batched games equal the CPU's step for step, the protocol
#    preset trains and resumes bit-exactly there, pinned uploads from the package's envs, AdamO
#    against the CPU, DQN);
# 3. benchmarks/batched_minatar.py and benchmarks/throughput_ppo_protocol.py on cuda (the GPU
#    figures of README "Throughput" and the issue's target: 5x the authors' ~83k per H100 run).
# Every step's output is also written under $OUT (what the device tool brings back).
set -uo pipefail
OUT=${OUT:-/tmp/plasticrl_device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), torch.get_num_threads(), 'threads')"
} 2>&1 | tee "$OUT/machine.txt"
timeout 200 python3 -m pytest tests/test_device.py -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt"
timeout 60 python3 benchmarks/batched_minatar.py --device cuda --seconds 2 2>&1 | tee "$OUT/batched_minatar.txt"
timeout 300 python3 benchmarks/throughput_ppo_protocol.py --device cuda \
    --cases breakout,protocol,protocol_bf16,protocol_package 2>&1 | tee "$OUT/throughput.txt"
