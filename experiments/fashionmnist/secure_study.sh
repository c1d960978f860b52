#!/usr/bin/env bash
# Issue 31's study: noise shares under secure aggregation on the Fashion-MNIST split of
# study.sh (10 clients, label Dirichlet 0.3), at spent epsilon 1, for DP-CVAE --preset dp,
# DP-FedPFT and the private federated classifier dpfedavg, with m honest sites in every sum
# (M_VALUES; m = 1 is every site adding the whole noise), against local. Runs in priority
# order (first seed first), skips finished runs; the table: python -m utils.collect on
# ${results_root}. Needs the database of experiments/fashionmnist/create_db.sh.
#   bash experiments/fashionmnist/secure_study.sh        (SEEDS="3407" M_VALUES="10" to run some)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${here}/base.sh"        # local_flags (no runs)
source "${here}/ours.sh"        # dp_flags, pft_flags

# ---- flags (edit here) -----------------------------------------------------------------------
read -ra SEEDS <<< "${SEEDS:-3407 12345 202502}"
read -ra M_VALUES <<< "${M_VALUES:-10 1 5 3}"
secure_cvae_flags=(--local_epochs 100 --lr 0.001 --classifier_optimizer adam
                   --weights_grid_resolution 0.1 "${dp_flags[@]}" --preset dp --epsilon 1)
secure_pft_flags=("${pft_flags[@]}" --dp on --delta 1e-4 --epsilon 1)
# one full-batch step per round (what secure aggregation needs), Adam at the coordinator
secure_fedavg_flags=(--n_rounds 50 --fedavg_local_epochs 1 --bz 100000 --optimizer adam
                     --fedavg_lr 0.01 "${dp_flags[@]}" --epsilon 1)
results_root=results/fashionmnist_secure
# ------------------------------------------------------------------------------------------------
backbone=${BACKBONES[0]}
start=${SECONDS}
for seed in "${SEEDS[@]}"; do
  run_main "${backbone}" local "${seed}" "${local_flags[@]}"
  for m in "${M_VALUES[@]}"; do
    secure=(--secure_aggregation --min_honest_sites "${m}")
    run_main "${backbone}" dpcvae "${seed}" "${secure_cvae_flags[@]}" "${secure[@]}"
    run_main "${backbone}" dpfedpft "${seed}" "${secure_pft_flags[@]}" "${secure[@]}"
    run_main "${backbone}" dpfedavg "${seed}" "${secure_fedavg_flags[@]}" "${secure[@]}"
  done
done
echo "secure study: $(( SECONDS - start )) s"
