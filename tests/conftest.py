"""Test-wide set-up: 8 fake CPU devices so sharding tests run anywhere.

XLA reads the flag once, at backend start, so it must be set before anything imports jax.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
