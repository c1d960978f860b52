#!/usr/bin/env bash
# Issue 31's study: noise shares under secure aggregation on the Fashion-MNIST split of
# study.sh (10 clients, label Dirichlet 0.3), at spent epsilon 1, for DP-CVAE --preset dp,
# DP-FedPFT and the private federated classifier dpfedavg, with m honest sites in every sum
# (M_FIRST then M_THEN for every seed; m = 1: every site adds the whole noise), and at epsilon
# 0.5 and 2 (SWEEP, the first seed), against local, FedAvg and FedLambda. Runs in priority order,
# skips finished runs; the tables: experiments/fashionmnist/secure_tables.sh. Needs the
# database of experiments/fashionmnist/create_db.sh.
#   bash experiments/fashionmnist/secure_study.sh   (STUDY_SEEDS="3407" M_FIRST="10" M_THEN= SWEEP= to run some)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${here}/base.sh"        # local_flags, fedavg_flags (no runs)
source "${here}/ours.sh"        # dp_flags, pft_flags
source "${here}/fedlambda.sh"   # fedlambda_flags

# ---- flags (edit here) -----------------------------------------------------------------------
read -ra SEEDS <<< "${STUDY_SEEDS:-${SEEDS[*]}}"   # setting.sh's, or STUDY_SEEDS
read -ra M_FIRST <<< "${M_FIRST:-10 1}"       # every seed, first
read -ra M_THEN <<< "${M_THEN:-5 3}"          # every seed, then
read -ra SWEEP <<< "${SWEEP-0.5 2}"           # the first seed, m of M_FIRST, last
secure_cvae_flags=(--local_epochs 100 --lr 0.001 --classifier_optimizer adam
                   --weights_grid_resolution 0.1 "${dp_flags[@]}" --preset dp)
secure_pft_flags=("${pft_flags[@]}" --dp on --delta 1e-4)
# one full-batch step per round (what secure aggregation needs), Adam at the coordinator
secure_fedavg_flags=(--n_rounds 50 --fedavg_local_epochs 1 --bz 100000 --optimizer adam
                     --fedavg_lr 0.01 "${dp_flags[@]}")
results_root=results/fashionmnist_secure
# ------------------------------------------------------------------------------------------------
backbone=${BACKBONES[0]}

secure_runs() {  # seed m epsilon
  local secure=(--secure_aggregation --min_honest_sites "$2" --epsilon "$3")
  run_main "${backbone}" dpcvae "$1" "${secure_cvae_flags[@]}" "${secure[@]}"
  run_main "${backbone}" dpfedpft "$1" "${secure_pft_flags[@]}" "${secure[@]}"
  run_main "${backbone}" dpfedavg "$1" "${secure_fedavg_flags[@]}" "${secure[@]}"
}

start=${SECONDS}
for seed in "${SEEDS[@]}"; do
  for method in local fedavg fedlambda; do
    flags_of "${method}"
    run_main "${backbone}" "${method}" "${seed}" "${FLAGS[@]}"
  done
  for m in "${M_FIRST[@]}"; do secure_runs "${seed}" "${m}" 1; done
done
for seed in "${SEEDS[@]}"; do
  for m in "${M_THEN[@]}"; do secure_runs "${seed}" "${m}" 1; done
done
for epsilon in "${SWEEP[@]}"; do
  for m in "${M_FIRST[@]}"; do secure_runs "${SEEDS[0]}" "${m}" "${epsilon}"; done
done
echo "secure study: $(( SECONDS - start )) s"
