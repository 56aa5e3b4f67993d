#!/usr/bin/env bash
# Set up mpqbench on a fresh machine: system data/browser packages (where apt and root exist), a venv
# in .venv with torch/torchvision and the project with all extras. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  missing=()
  dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || missing+=(dataset-fashion-mnist)
  # a C compiler builds the fused LSQ kernels once per machine (without one the slower eager path is used)
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  if [ "${MPQBENCH_SKIP_BROWSER:-0}" != "1" ]; then
    dpkg -s chromium >/dev/null 2>&1 || missing+=(chromium)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
else
  echo "setup: no apt/root here; install Fashion-MNIST yourself: apt-get install dataset-fashion-mnist, or 'mpqbench download --dataset fashion-mnist --data-root DIR' (then --data-root DIR or MPQBENCH_DATA_ROOT=DIR)"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch/torchvision first, pinned to the releases this project is tested with.
python -c "import torch, torchvision" 2>/dev/null || python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[all]"
echo "setup: done ($(python -c 'import torch; print("torch", torch.__version__)'))"
