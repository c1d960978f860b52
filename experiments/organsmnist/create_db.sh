#!/usr/bin/env bash
# Encode OrganSMNIST (224 px) with the paper's feature extractors.
# First download the official file (about 1 GB) once:
#   mkdir -p data/organsmnist/dataset
#   wget -P data/organsmnist/dataset https://zenodo.org/records/10519652/files/organsmnist_224.npz
# or add --download below (create_db.py fetches it through the medmnist package).
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

BACKBONES=(
  vit_base_patch14_dinov2.lvd142m          # the paper's default (768-d)
  vit_small_patch14_dinov2.lvd142m         # 384-d
  vit_base_patch16_224.dino
  vit_small_patch16_224.dino
  vit_base_patch16_224.augreg_in21k_ft_in1k
  vit_small_patch16_224.augreg_in21k_ft_in1k
)
dataset_root=data/organsmnist/dataset
size=224
batch_size=64

for backbone in "${BACKBONES[@]}"; do
  $PY data/create_db.py --dataset organsmnist --size "${size}" --dataset_root "${dataset_root}" \
    --database_root "data/organsmnist/database/${backbone}" --backbone "${backbone}" \
    --batch_size "${batch_size}" --resume
done
