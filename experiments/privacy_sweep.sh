#!/usr/bin/env bash
# Privacy-utility sweep: DP-CVAE, DP-CGAN and DP-FedPFT at several target epsilons (spent over
# the whole training), with every other flag from the dataset's ours.sh, then the privacy-utility plot
# with the baselines as references.
#   bash experiments/privacy_sweep.sh                          (OrganSMNIST, DINOv2-B)
#   DATASET=digits BACKBONE=tf_efficientnet_lite0 bash experiments/privacy_sweep.sh
# Run the baselines first (experiments/<dataset>/base.sh, fedlambda.sh) for the reference lines.
dataset=${DATASET:-organsmnist}
source "$(dirname "${BASH_SOURCE[0]}")/${dataset}/ours.sh"  # its flags (and the runner), no runs

# ---- flags (edit here): what the sweep changes in ours.sh's ---------------------------------
epsilons=(0.5 1 2 4 8)
methods=(dpcvae dpcgan dpfedpft)
BACKBONES=(${BACKBONE:-${BACKBONES[@]}})
# ------------------------------------------------------------------------------------------------

run_experiments
for backbone in "${BACKBONES[@]}"; do
  runs=${results_root}/${dataset}/${backbone}
  $PY -m utils.plots "${runs}" --sweep "${runs}" --out "${runs}/plots"
done
