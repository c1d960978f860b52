#!/usr/bin/env bash
# The GPU checks of docs/performance.md in one go, for a machine with CUDA: the CUDA
# equivalence tests, then bench_train.py on CUDA with every client at once (the whole
# paper-scale DP-CVAE and DP-CGAN runs, peak GPU memory) and one client at a time (5 rounds,
# with the per-epoch figures of the fast path and of Opacus's hooks, the paper's path, on the
# same GPU). JSON files go to the folder given as the first argument (default assets/benchmarks).
#   bash experiments/benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
out=${1:-assets/benchmarks}
mkdir -p "${out}"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA here'; print(torch.cuda.get_device_name())"
$PY -m pytest -q -p no:cacheprovider tests/algorithms/federation/test_vectorized.py -k cuda
$PY experiments/benchmarks/bench_train.py --device cuda --vectorized on --skip_per_epoch \
  --json "${out}/bench_train_gpu_vectorized.json"
$PY experiments/benchmarks/bench_train.py --device cuda --vectorized off --rounds 5 \
  --json "${out}/bench_train_gpu_per_client.json"
