"""Benchmarks side by side with transformers / PyTorch: `python -m benchmarks` (see __main__)."""
