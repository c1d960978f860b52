#!/usr/bin/env bash
# The tables, plot and targets of issue 31's study (secure_study.sh) and of issue 32's
# (patient_study.sh), from their runs: one table per downstream mode and lambda metric, and for
# the patient study one per K, into assets/fashionmnist_study/{secure_aggregation,patients}/.
#   bash experiments/fashionmnist/secure_tables.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
secure_runs=results/fashionmnist_secure
patient_runs=results/fashionmnist_patients
out=assets/fashionmnist_study

if [ -d "${secure_runs}" ]; then
  for mode in mix prior joint; do
    for metric in accuracy balanced_accuracy; do
      stem=${metric%_accuracy}; [ "${stem}" = accuracy ] || stem=balanced
      $PY -m utils.collect "${secure_runs}" --out "${out}/secure_aggregation" \
        --name "table_${mode}_${stem}" --downstream "${mode}" --lambda_metric "${metric}"
    done
  done
  $PY experiments/fashionmnist/secure_report.py "${secure_runs}" --out "${out}/secure_aggregation"
fi
for k_dir in "${patient_runs}"/k*; do
  [ -d "${k_dir}" ] || continue
  k=$(basename "${k_dir}")
  for mode in mix joint; do
    $PY -m utils.collect "${k_dir}" --out "${out}/patients" --name "table_${k}_${mode}_balanced" \
      --downstream "${mode}" --lambda_metric balanced_accuracy
  done
done
