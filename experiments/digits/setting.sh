# The setting that experiments/digits/{base,fedlambda,ours}.sh share (each sources this
# file): the dataset, the seeds, the backbones (one database each) and the client split. Edit
# it here to change all three; their method flags stay in each script.

# ---- flags (edit here) -----------------------------------------------------------------------
dataset=digits
SEEDS=(3407 12345 202502)
BACKBONES=(tf_efficientnet_lite0)                # the database that make demo builds
split_flags=(--split_method by_labels_split --n_clients 10 --alpha 0.3 --n_components -1
             --test_data_frac 0.2 --val_frac 0.2 --split_seed 202502)
# ------------------------------------------------------------------------------------------------
