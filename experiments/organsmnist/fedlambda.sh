#!/usr/bin/env bash
# FedLambda (the FedAvg head mixed with each client's local head, lam * local + (1 - lam) *
# global, lam chosen on validation from {0, 0.1, ..., 1}) on OrganSMNIST embeddings, with the
# paper's settings. Needs the databases of experiments/organsmnist/create_db.sh. Ends with the
# table of every run so far. Edit the flags below (the FedAvg part and the local head: base.sh;
# the dataset, seeds, backbones and split: setting.sh); experiments/common.sh runs them (every
# seed, skipping finished runs).
source "$(dirname "${BASH_SOURCE[0]}")/base.sh"  # setting.sh, common.sh and base.sh's flags

# ---- flags (edit here) -----------------------------------------------------------------------
methods=(fedlambda)
algorithm=                # base.sh's choice of baseline is not this script's
fedlambda_flags=("${fedavg_flags[@]}" "${local_flags[@]}"  # base.sh's FedAvg part and local head
                 --weights_grid_resolution 0.1)            # the lambda grid
results_root=results
# ------------------------------------------------------------------------------------------------
run_unless_sourced
