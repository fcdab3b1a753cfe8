"""Benchmarks side by side with transformers / PyTorch: `python -m benchmarks` (see __main__)."""

from skinr1_jax.train.host import retain_freed_host_memory

# Every benchmark process (ours and the transformers side alike) runs with the launcher's host
# setting, so the comparison is the one a `python -m launch` user gets.
retain_freed_host_memory()
