"""The federation on Flower: a ServerApp and a ClientApp that run main.py's methods with the
same client-round and aggregation functions, in Flower's simulation or deployment engine."""
