"""The methods a run can train: the registry of every method (registry.py) and each method's
code: the baselines (baselines.py, fedavg.py), the DP generative methods (generative.py with
dpcvae.py and dpcgan.py), and FedPFT (fedpft.py with gaussians.py)."""
