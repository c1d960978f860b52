# What every experiment script shares; sourced by experiments/<dataset>/{base,fedlambda,ours}.sh,
# experiments/privacy_sweep.sh and experiments/digits/demo.sh, which hold their flag blocks only.
# experiments/<dataset>/setting.sh holds what that dataset's three scripts share (dataset, SEEDS,
# BACKBONES, split_flags); fedlambda.sh sources base.sh for its FedAvg and local-head flags.
#
# A script sets: dataset, SEEDS, BACKBONES, methods, split_flags, results_root, and for each
# method it may run the array <method>_flags: the flags that method reads (main.py refuses a flag
# that the method does not read). Optional: epsilons (one run per target epsilon, for the methods
# whose flags hold --dp; the others run once, without --epsilon), algorithm (the
# paper's spelling of base.sh's method: normal | fedprox). Environment: METHODS overrides
# `methods`; PY is the Python to use (default: the project's .venv, else `python` on PATH).

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi

# FLAGS=(the flags of method $1): the script's array <method>_flags.
flags_of() {
  local name="${1}_flags"
  if ! declare -p "${name}" >/dev/null 2>&1; then
    echo "error: $(basename "$0") sets no ${name}=(...): it does not run --method $1" >&2
    exit 2
  fi
  name="${name}[@]"
  FLAGS=("${!name}")
}

# The methods to run: METHODS from the environment, else base.sh's `algorithm` (the paper's
# spelling) when set, else the script's `methods`.
chosen_methods() {
  if [ -n "${METHODS:-}" ]; then
    read -ra methods <<< "${METHODS}"
  elif [ -n "${algorithm:-}" ]; then
    case "${algorithm}" in
      normal) methods=(fedavg) ;;
      fedprox) methods=(fedprox) ;;
      *) echo "error: algorithm=${algorithm}: the paper's spellings are normal and fedprox" >&2
         exit 2 ;;
    esac
  fi
}

# One run: run_main BACKBONE METHOD SEED [more flags] with the script's split flags (a finished
# run is skipped, an interrupted one resumed).
run_main() {
  local backbone=$1 method=$2 seed=$3
  shift 3
  $PY main.py --database_root "data/${dataset}/database/${backbone}" --method "${method}" \
    "${split_flags[@]}" "$@" --seed "${seed}" --results_root "${results_root}" \
    --skip_existing --resume
}

# Every run of the script (backbone x method x epsilon x seed; finished runs are skipped and
# interrupted ones resumed), then the table of each backbone's runs.
run_experiments() {
  chosen_methods
  local backbone method epsilon seed
  for backbone in "${BACKBONES[@]}"; do
    for method in "${methods[@]}"; do
      flags_of "${method}"
      local targets=("${epsilons[@]:-}")
      [[ " ${FLAGS[*]} " == *" --dp "* ]] || targets=("")
      for epsilon in "${targets[@]}"; do
        for seed in "${SEEDS[@]}"; do
          run_main "${backbone}" "${method}" "${seed}" "${FLAGS[@]}" \
            ${epsilon:+--epsilon "${epsilon}"}
        done
      done
    done
    $PY -m utils.collect "${results_root}/${dataset}/${backbone}"
  done
}

# The last line of each script: run it, unless it is sourced for its flags (privacy_sweep.sh).
run_unless_sourced() {
  if [ "${BASH_SOURCE[1]}" = "$0" ]; then
    run_experiments
  fi
}
