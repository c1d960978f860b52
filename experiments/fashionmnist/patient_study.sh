#!/usr/bin/env bash
# Issue 32's study: the patient as the unit of privacy on the Fashion-MNIST split of study.sh,
# its records grouped into pseudo-patients of K records of one class (pseudo_patients.py; a
# stand-in for a patient's series). DP-CVAE --preset dp and DP-FedPFT at epsilon 1 per patient
# (--privacy_unit auto: the data has patient ids) and at epsilon 1 per record (--privacy_unit
# record: the group bound for the largest patient is reported), against local on the same
# patient-level split; one seed for each K, every seed for K = 5. Skips finished runs; the
# tables: python -m utils.collect on ${results_root}/<K>. Needs the database of create_db.sh.
#   bash experiments/fashionmnist/patient_study.sh            (KS="5" STUDY_SEEDS="3407" to run some)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${here}/base.sh"        # local_flags (no runs)
source "${here}/ours.sh"        # dp_flags, pft_flags

# ---- flags (edit here) -----------------------------------------------------------------------
read -ra KS <<< "${KS:-5 1 20}"
read -ra SEEDS <<< "${STUDY_SEEDS:-${SEEDS[*]}}"   # setting.sh's, or STUDY_SEEDS
all_seeds_k=5
cvae_flags=(--local_epochs 100 --lr 0.001 --classifier_optimizer adam --weights_grid_resolution 0.1
            "${dp_flags[@]}" --preset dp --epsilon 1)
pft_study_flags=("${pft_flags[@]}" --dp on --delta 1e-4 --epsilon 1)
results_base=results/fashionmnist_patients
# ------------------------------------------------------------------------------------------------
backbone=${BACKBONES[0]}
source_db="data/${dataset}/database/${backbone}"

patient_runs() {  # k seed
  local db="data/${dataset}/database/pseudo_k$1"
  [ -f "${db}/meta.json" ] || $PY experiments/fashionmnist/pseudo_patients.py "${source_db}" "${db}" --k "$1" || exit 1
  local common=(--database_root "${db}" "${split_flags[@]}" --seed "$2"
                --results_root "${results_base}/k$1" --skip_existing --resume)
  $PY main.py --method local "${common[@]}" "${local_flags[@]}"
  for unit in auto record; do
    $PY main.py --method dpcvae "${common[@]}" "${cvae_flags[@]}" --privacy_unit "${unit}"
    $PY main.py --method dpfedpft "${common[@]}" "${pft_study_flags[@]}" --privacy_unit "${unit}"
  done
}

start=${SECONDS}
for k in "${KS[@]}"; do patient_runs "${k}" "${SEEDS[0]}"; done
for seed in "${SEEDS[@]:1}"; do patient_runs "${all_seeds_k}" "${seed}"; done
echo "patient study: $(( SECONDS - start )) s"
