#!/usr/bin/env bash
# The baselines: FedAvg, FedProx, local heads and a centralized head on Fashion-MNIST (the paper's
# client sizes, offline) embeddings, with the paper's settings. Needs the database of
# experiments/fashionmnist/create_db.sh. Ends with the table of every run so far. Edit the flags
# below; experiments/common.sh runs them (every seed, skipping finished runs).
source "$(dirname "${BASH_SOURCE[0]}")/setting.sh"  # dataset, SEEDS, BACKBONES, split_flags
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

# ---- flags (edit here) -----------------------------------------------------------------------
methods=(fedavg)          # any of: local centralized fedavg fedprox
algorithm=                # or the paper's spelling instead: normal (FedAvg) | fedprox
fedavg_flags=(--n_rounds 50 --fedavg_local_epochs 5 --bz 128 --fedavg_lr 0.001 --optimizer sgd
              --lr_scheduler multi_step --sampling_rate 1.0)
fedprox_flags=("${fedavg_flags[@]}" --mu 0.05)      # proximal term mu/2 * ||w - w_global||^2
local_flags=(--local_epochs 100 --lr 0.001 --weight_decay 5e-4 --classifier_optimizer adam)
centralized_flags=("${local_flags[@]}")             # one head on the pooled data (not private)
results_root=results
# ------------------------------------------------------------------------------------------------
run_unless_sourced
