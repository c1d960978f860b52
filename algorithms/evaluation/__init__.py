"""Evaluation: the lambda protocol and per-client test metrics (protocol.py), and the linear
classification heads on embeddings (heads.py)."""
