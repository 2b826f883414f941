"""Benchmark of the model registry against an ideal one-hop registry (`python -m bench`)."""
