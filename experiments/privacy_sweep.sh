#!/usr/bin/env bash
# Privacy-utility sweep: DP-CVAE and DP-CGAN at several target epsilons (spent over the whole
# training), then the privacy-utility plot with the baselines as references.
#   bash experiments/privacy_sweep.sh                          (OrganSMNIST, DINOv2-B)
#   DATASET=digits BACKBONE=tf_efficientnet_lite0 bash experiments/privacy_sweep.sh
# Run the baselines first (experiments/<dataset>/base.sh, fedlambda.sh) for the reference lines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

# ---- flags (edit here) -----------------------------------------------------------------------
dataset=${DATASET:-organsmnist}
backbone=${BACKBONE:-vit_base_patch14_dinov2.lvd142m}
SEEDS=(3407 12345 202502)
epsilons=(0.5 1 2 4 8)
methods=(dpcvae dpcgan)
split_flags=(--split_method by_labels_split --n_clients 10 --alpha 0.3 --split_seed 202502)
[ "${dataset}" = camelyon17 ] && split_flags=(--split_method natural --split_seed 202502)
results_root=results
# ------------------------------------------------------------------------------------------------

database_root=data/${dataset}/database/${backbone}
for method in "${methods[@]}"; do
  for epsilon in "${epsilons[@]}"; do
    for seed in "${SEEDS[@]}"; do
      $PY main.py --database_root "${database_root}" --method "${method}" --epsilon "${epsilon}" \
        "${split_flags[@]}" --seed "${seed}" --results_root "${results_root}" --skip_existing --resume
    done
  done
done
runs=${results_root}/${dataset}/${backbone}
$PY -m utils.collect "${runs}"
$PY -m utils.plots "${runs}" --sweep "${runs}" --out "${runs}/plots" --database_root "${database_root}"
