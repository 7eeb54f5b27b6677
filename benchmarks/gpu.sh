#!/usr/bin/env bash
# The checks that need a GPU, in one go (about 5 minutes on one H200): the CUDA and CuPy tests, then the Muon step
# benchmark (lmo.optimizers.Muon, default and method="auto", vs torch.optim.Muon) at d = 1024 and 2048, on the GPU.
#
#   bash benchmarks/gpu.sh            # from anywhere; prints the test summary and the table
#
# Nothing is installed by hand and nothing is written outside a temporary folder: the package is put on the path
# as it is in this checkout (links, no pip install); array-api-compat, the one core dependency a GPU image may lack,
# comes from a folder of wheels if WHEELS=<folder> is set, else from pip's index. It needs python3 with torch (CUDA),
# numpy, pytest and hypothesis; CuPy is used if it is there. PYTHON=<interpreter> picks another python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
mkdir "$site/lmo"
for f in lmo/*; do ln -s "$PWD/$f" "$site/lmo/"; done
ln -s "$PWD/geometries" "$site/lmo/geometries"
ln -s "$PWD/optimizers" "$site/lmo/optimizers"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import array_api_compat" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --target "$site" ${WHEELS:+--no-index --find-links "$WHEELS"} array-api-compat
fi
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "benchmarks/gpu.sh needs a CUDA device"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
PY
echo "== tests on torch-cuda and cupy (the backends this CPU machine skips)"
HYPOTHESIS_PROFILE=dev timeout 240 "$PY" -m pytest -q -p no:cacheprovider -k "cuda or cupy or gpu" tests || \
  echo "(tests: exit $?)"
echo "== one Muon step, GPT-shaped, on the GPU"
timeout 240 "$PY" benchmarks/muon_step.py --device cuda --widths 1024,2048 --repeats 5
