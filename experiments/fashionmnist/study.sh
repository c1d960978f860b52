#!/usr/bin/env bash
# The privacy-utility study on the Fashion-MNIST split at the paper's client sizes (10 clients,
# label Dirichlet 0.3): DP-CVAE with the paper's settings and with --preset dp (our recipe,
# docs/dp_recipe.md), DP-FedPFT, DP-CGAN with --preset dp-cgan (a schedule a 2-core CPU can run)
# and with the paper's settings, at epsilon 1 with every seed of SEEDS, at each target epsilon
# of `epsilons` and without DP (one seed); against local, centralized, FedAvg and FedLambda
# (every seed). The flags of each method are those of base.sh, fedlambda.sh and ours.sh (edit
# them there). Every run reports every downstream mode (mix, prior, joint) under both lambda
# metrics and on the pooled test data; the study writes one table per mode and metric and the
# privacy-utility plot into `out`, and
# compares the two CVAE losses without DP (synthetic-only accuracy, W-distance, PCA plots).
# Needs the database of experiments/fashionmnist/create_db.sh. Prints its run time at the end.
#   bash experiments/fashionmnist/study.sh           (STUDY_METHODS="dpcvae_preset" to run some)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${here}/base.sh"        # fedavg_flags, local_flags, centralized_flags (no runs)
source "${here}/fedlambda.sh"   # fedlambda_flags
source "${here}/ours.sh"        # dpcvae_flags, dpcgan_flags, dp_flags

# ---- flags (edit here) -----------------------------------------------------------------------
SEEDS=(3407 12345 202502)
sweep_seed=3407
epsilons=(1 8 0.5 2 4)   # in this order, so that a partial study has the ends first
study=(baselines dpcvae_preset dpfedpft dpcgan_preset dpcvae losses dpcgan)   # in this order
dpcvae_preset_flags=(--local_epochs 100 --lr 0.001 --classifier_optimizer adam
                     --weights_grid_resolution 0.1 "${dp_flags[@]}" --preset dp
                     --save_synthetic)   # for the PCA plot and experiments/mixing_probe.py
dpcgan_preset_flags=(--local_epochs 100 --lr 0.001 --classifier_optimizer adam
                     --weights_grid_resolution 0.1 "${dp_flags[@]}" --preset dp-cgan)
results_root=results/fashionmnist_study
out=assets/fashionmnist_study
# ------------------------------------------------------------------------------------------------
read -ra study <<< "${STUDY_METHODS:-${study[*]}}"
backbone=${BACKBONES[0]}

# A DP method: every seed at epsilon 1, the sweep (one seed), and without DP.
sweep() {
  local method=$1 flags_name=$2
  flags_of "${flags_name}"
  for seed in "${SEEDS[@]}"; do
    run_main "${backbone}" "${method}" "${seed}" "${FLAGS[@]}" --epsilon 1
  done
  for epsilon in "${epsilons[@]}"; do
    run_main "${backbone}" "${method}" "${sweep_seed}" "${FLAGS[@]}" --epsilon "${epsilon}"
  done
  run_main "${backbone}" "${method}" "${sweep_seed}" "${FLAGS[@]}" --dp off  # the last --dp wins
}

start=${SECONDS}
for what in "${study[@]}"; do
  case "${what}" in
    baselines)
      for method in local centralized fedavg fedlambda; do
        flags_of "${method}"
        for seed in "${SEEDS[@]}"; do run_main "${backbone}" "${method}" "${seed}" "${FLAGS[@]}"; done
      done ;;
    dpcvae_preset) sweep dpcvae dpcvae_preset ;;
    losses)  # the two CVAE losses without DP, the paper's architecture, with their PCA plots
      flags_of dpcvae
      run_main "${backbone}" dpcvae "${sweep_seed}" "${FLAGS[@]}" --dp off --save_synthetic
      run_main "${backbone}" dpcvae "${sweep_seed}" "${FLAGS[@]}" --dp off --save_synthetic \
        --cvae_loss elbo --cvae_beta 1
      for run in "${results_root}/${dataset}/${backbone}"/dpcvae-*/"seed_${sweep_seed}"; do
        if [ -f "${run}/synthetic.npz" ]; then
          loss=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["generative"]["cvae_loss"])' "${run}/config.json")
          $PY -m utils.plots "${run}" --out "${out}/pca_${loss}_loss_no_dp"
        fi
      done ;;
    dpfedpft) sweep dpfedpft dpfedpft ;;
    dpcgan_preset) sweep dpcgan dpcgan_preset ;;
    *) sweep "${what}" "${what}" ;;
  esac
done
runs="${results_root}/${dataset}/${backbone}"
mkdir -p "${out}"
for mode in mix prior joint; do   # every downstream mode, each value chosen by each metric
  $PY -m utils.collect "${runs}" --out "${out}" --name "table_${mode}_accuracy" \
    --downstream "${mode}" --lambda_metric accuracy
  $PY -m utils.collect "${runs}" --out "${out}" --name "table_${mode}_balanced" \
    --downstream "${mode}" --lambda_metric balanced_accuracy
done
$PY -m utils.plots "${runs}" --sweep "${runs}" --out "${out}"
# the targets (a private row at epsilon <= 1, 3 seeds, against local, per mode and metric)
$PY experiments/fashionmnist/targets.py "${out}" --out "${out}/targets.md"
echo "study: $(( SECONDS - start )) s on $(nproc) CPU cores"
