"""Differential privacy: the settings (config.py), calibration and accounting (accounting.py),
the noise draws (noise.py), the DP-SGD step (dp_sgd.py, with ghost_clipping.py's single-backward
clipping), the code that depends on Opacus internals (opacus_compat.py), a DP-trained client
(dp_client.py) with its generative settings (generative_config.py), the analytic Gaussian
mechanism of a one-shot release (analytic_gaussian.py), and the empirical audit of a finished
run (audit/)."""
