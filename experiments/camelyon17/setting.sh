# The setting that experiments/camelyon17/{base,fedlambda,ours}.sh share (each sources this
# file): the dataset, the seeds, the backbones (one database each) and the client split. Edit
# it here to change all three; their method flags stay in each script.

# ---- flags (edit here) -----------------------------------------------------------------------
dataset=camelyon17
SEEDS=(3407 12345 202502)
BACKBONES=(vit_base_patch14_dinov2.lvd142m)      # the paper's six: see create_db.sh
split_flags=(--split_method natural --test_data_frac 0.2 --val_frac 0.2  # one client per hospital
             --split_seed 202502)
# ------------------------------------------------------------------------------------------------
