#!/usr/bin/env bash
# FedAvg / FedProx baselines on OrganSMNIST embeddings, with the paper's settings.
# Switch `algorithm` between normal (FedAvg) and fedprox (FedProx). Needs the databases of
# experiments/organsmnist/create_db.sh. Ends with the table of every run so far.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}

# ---- flags (edit here) -----------------------------------------------------------------------
SEEDS=(3407 12345 202502)
BACKBONES=(vit_base_patch14_dinov2.lvd142m)   # the paper's six are listed in create_db.sh
algorithm=normal          # normal (FedAvg) | fedprox
split_method=by_labels_split
n_clients=10
alpha=0.3
split_seed=202502
n_rounds=50
local_steps=5
bz=128
fedavg_lr=0.001
lr_scheduler=multi_step
mu=0.05                   # FedProx only: mu/2 * ||w - w_global||^2
results_root=results
# ------------------------------------------------------------------------------------------------

for backbone in "${BACKBONES[@]}"; do
  for seed in "${SEEDS[@]}"; do
    $PY main.py --database_root "data/organsmnist/database/${backbone}" --algorithm "${algorithm}" \
      --split_method "${split_method}" --n_clients "${n_clients}" --alpha "${alpha}" \
      --n_components -1 --test_data_frac 0.2 --val_frac 0.2 --split_seed "${split_seed}" \
      --n_rounds "${n_rounds}" --local_steps "${local_steps}" --bz "${bz}" \
      --fedavg_lr "${fedavg_lr}" --optimizer sgd --lr_scheduler "${lr_scheduler}" --mu "${mu}" \
      --seed "${seed}" --results_root "${results_root}" --skip_existing --resume
  done
  $PY -m utils.collect "${results_root}/organsmnist/${backbone}"
done
