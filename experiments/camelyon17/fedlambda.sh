#!/usr/bin/env bash
# FedLambda on Camelyon17-WILDS (one client per hospital): the FedAvg head mixed with each
# client's local head,
# lam * local + (1 - lam) * global, lam chosen on validation from {0, 0.1, ..., 1}.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}

# ---- flags (edit here) -----------------------------------------------------------------------
SEEDS=(3407 12345 202502)
BACKBONES=(vit_base_patch14_dinov2.lvd142m)
split_method=natural      # one client per hospital file
split_seed=202502
n_rounds=50               # FedAvg part, as in base.sh
local_steps=5
bz=128
fedavg_lr=0.001
lr_scheduler=multi_step
classifier_optimizer=adam # local head: 100 full-batch epochs, Adam lr 1e-3, weight decay 5e-4
local_epochs=100
lr=0.001
weights_grid_resolution=0.1
results_root=results
# ------------------------------------------------------------------------------------------------

for backbone in "${BACKBONES[@]}"; do
  for seed in "${SEEDS[@]}"; do
    $PY main.py --database_root "data/camelyon17/database/${backbone}" --method fedlambda \
      --split_method "${split_method}" \
      --test_data_frac 0.2 --val_frac 0.2 --split_seed "${split_seed}" \
      --n_rounds "${n_rounds}" --local_steps "${local_steps}" --bz "${bz}" \
      --fedavg_lr "${fedavg_lr}" --optimizer sgd --lr_scheduler "${lr_scheduler}" \
      --classifier_optimizer "${classifier_optimizer}" --local_epochs "${local_epochs}" \
      --lr "${lr}" --weights_grid_resolution "${weights_grid_resolution}" \
      --seed "${seed}" --results_root "${results_root}" --skip_existing --resume
  done
  $PY -m utils.collect "${results_root}/camelyon17/${backbone}"
done
