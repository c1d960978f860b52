#!/usr/bin/env bash
# The baselines: FedAvg, FedProx, local heads and a centralized head on Fashion-MNIST (the paper's
# client sizes, offline) embeddings, with the paper's settings. Needs the database of
# experiments/fashionmnist/create_db.sh. Ends with the table of every run so far. Edit the flags
# below; experiments/common.sh runs them (every seed, skipping finished runs).
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

# ---- flags (edit here) -----------------------------------------------------------------------
dataset=fashionmnist
SEEDS=(3407 12345 202502)
BACKBONES=(tf_efficientnet_lite0)                # see create_db.sh
methods=(fedavg)          # any of: local centralized fedavg fedprox
algorithm=                # or the paper's spelling instead: normal (FedAvg) | fedprox
split_flags=(--split_method by_labels_split --n_clients 10 --alpha 0.3 --n_components -1
             --test_data_frac 0.2 --val_frac 0.2 --split_seed 202502)
fedavg_flags=(--n_rounds 50 --fedavg_local_epochs 5 --bz 128 --fedavg_lr 0.001 --optimizer sgd
              --lr_scheduler multi_step --sampling_rate 1.0)
fedprox_flags=("${fedavg_flags[@]}" --mu 0.05)      # proximal term mu/2 * ||w - w_global||^2
local_flags=(--local_epochs 100 --lr 0.001 --weight_decay 5e-4 --classifier_optimizer adam)
centralized_flags=("${local_flags[@]}")             # one head on the pooled data (not private)
results_root=results
# ------------------------------------------------------------------------------------------------
run_unless_sourced
