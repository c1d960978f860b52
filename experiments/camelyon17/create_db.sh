#!/usr/bin/env bash
# Encode Camelyon17-WILDS: 4,600 patches (920 per hospital), one database file per hospital.
# First download the WILDS data (about 10 GB) once:
#   .venv/bin/python -c "from wilds import get_dataset; get_dataset('camelyon17', root_dir='data/camelyon17/dataset', download=True)"
# or add --download below. Only the sampled patches are read and encoded.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

BACKBONES=(
  vit_base_patch14_dinov2.lvd142m
  vit_small_patch14_dinov2.lvd142m
  vit_base_patch16_224.dino
  vit_small_patch16_224.dino
  vit_base_patch16_224.augreg_in21k_ft_in1k
  vit_small_patch16_224.augreg_in21k_ft_in1k
)
dataset_root=data/camelyon17/dataset
s_frac=4600            # total patches, split equally between the 5 hospitals
seed=202502            # which patches are sampled

for backbone in "${BACKBONES[@]}"; do
  $PY data/create_db.py --dataset camelyon17 --dataset_root "${dataset_root}" \
    --database_root "data/camelyon17/database/${backbone}" --backbone "${backbone}" \
    --s_frac "${s_frac}" --seed "${seed}" --resume
done
