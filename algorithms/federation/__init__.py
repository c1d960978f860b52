"""The federation: the round loop (rounds.py), weighted averaging (aggregation.py), and every
client trained at once as one stacked model (stacked.py, vectorized.py)."""
