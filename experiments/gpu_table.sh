#!/usr/bin/env bash
# One dataset's table on one GPU: every method x the three seeds at epsilon 1, with the flags of
# experiments/<dataset>/{base,fedlambda,ours}.sh, plus --device cuda (the DP generative methods
# then train every client at once: --vectorized auto). The GPU target (docs/performance.md): OrganSMNIST's table in
# <= 10 minutes on one GPU once the embeddings exist (experiments/organsmnist/create_db.sh).
# Finished runs are skipped, interrupted ones resumed; ends with the table and the time taken.
#   bash experiments/gpu_table.sh                                    (OrganSMNIST, DINOv2-B)
#   DATASET=fashionmnist BACKBONE=tf_efficientnet_lite0 bash experiments/gpu_table.sh
#   DEVICE=cpu bash experiments/gpu_table.sh                         (the same table on CPU)
dataset=${DATASET:-organsmnist}
for script in base fedlambda ours; do  # their flags (and the runner), no runs
  source "$(dirname "${BASH_SOURCE[0]}")/${dataset}/${script}.sh"
done

# ---- flags (edit here): what the table changes in those scripts' ----------------------------
device=${DEVICE:-cuda}
methods=(local centralized fedavg fedprox fedlambda dpfedavg dpcgan dpcvae fedpft dpfedpft)
epsilons=()               # the target epsilon is in the DP methods' flags (the others refuse it)
BACKBONES=(${BACKBONE:-${BACKBONES[@]}})
local_flags+=(--device "${device}")
centralized_flags+=(--device "${device}")
fedavg_flags+=(--device "${device}")
fedprox_flags+=(--device "${device}")
fedlambda_flags+=(--device "${device}")
dpfedavg_flags=("${fedavg_flags[@]}" --epsilon 1.0)  # fedavg's flags (with its --device), private
dpcgan_flags+=(--epsilon 1.0 --device "${device}")
dpcvae_flags+=(--epsilon 1.0 --device "${device}")
fedpft_flags+=(--device "${device}")                  # FedPFT computes on the CPU anyway
dpfedpft_flags+=(--epsilon 1.0 --device "${device}")
# ------------------------------------------------------------------------------------------------

run_experiments
echo "${dataset}: ${#methods[@]} methods x ${#SEEDS[@]} seeds on ${device} in ${SECONDS} s"
