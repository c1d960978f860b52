#!/usr/bin/env bash
# DP-CVAE (ours) and DP-CGAN on the bundled digits dataset (no download) embeddings, with the
# paper's settings. Needs the database that `make demo` builds. Ends with the table of every run
# so far. The noise is calibrated so that each client spends at most each of `epsilons` over the
# whole training; metrics.json reports the epsilon actually spent (--dp_calibration paper
# reproduces the paper's over-spending setting). Edit the flags below (the dataset, seeds,
# backbones and split: setting.sh); experiments/common.sh runs them (every seed, skipping finished
# runs).
source "$(dirname "${BASH_SOURCE[0]}")/setting.sh"  # dataset, SEEDS, BACKBONES, split_flags
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

# ---- flags (edit here) -----------------------------------------------------------------------
methods=(dpcvae)          # any of: dpcvae (ours) dpcgan fedpft dpfedpft
epsilons=(1.0)            # target epsilon of each client over the whole training
dp=on                     # on | off (an ablation: nothing is private)
head_flags=(--local_epochs 100 --lr 0.001 --classifier_optimizer adam  # --lr: the CVAE's too
            --weights_grid_resolution 0.1)
generative_flags=(--n_fedavg_rounds 50 --local_epochs_gen 5 --gen_batch_size 256
                  --generated_factor 1.0)
dp_flags=(--dp "${dp}" --delta 1e-4 --max_grad_norm 1.5 --accountant prv --dp_calibration total)
dpcvae_flags=("${head_flags[@]}" "${generative_flags[@]}" "${dp_flags[@]}" --cvae_beta 0.1
              --cvae_var 1.0)
dpcgan_flags=("${head_flags[@]}" "${generative_flags[@]}" "${dp_flags[@]}" --gan_lr 2e-4)
# FedPFT, the rival: one round of class-conditional Gaussians (fedpft is not private and runs
# once per seed, without --epsilon; dpfedpft makes one Gaussian-mechanism release per epsilon)
pft_flags=("${head_flags[@]}" --generated_factor 1.0 --pft_covariance diag)
fedpft_flags=("${pft_flags[@]}" --pft_components 1)
dpfedpft_flags=("${pft_flags[@]}" --dp "${dp}" --delta 1e-4)
results_root=results
# ------------------------------------------------------------------------------------------------
run_unless_sourced
