#!/usr/bin/env bash
# Run here, before a device run: downloads into .whl/ (ignored) the wheels the GPU machine's image
# lacks. Its python3 (3.12) has torch, numpy, pytest, pyyaml, tensorboard and matplotlib, not
# gymnasium or minatar (/work/.library/device/KINDS.md); the versions are this environment's.
#
#   bash benchmarks/device/prepare.sh
#   then, with the device tool: run(command="bash benchmarks/device/run.sh", carry=[".whl"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/../.."
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "gymnasium==$(version gymnasium)" "minatar==$(version minatar)" \
    "farama-notifications==$(version farama-notifications)"
ls .whl
