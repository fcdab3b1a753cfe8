"""Benchmarks side by side with transformers / PyTorch: `python -m benchmarks` (see __main__)."""

from skinr1_jax.train.host import tune_cpu_backend

# Every benchmark process (ours and the transformers side alike) runs with the launcher's host
# settings, so the comparison is the one a `python -m launch` user gets.
tune_cpu_backend()
