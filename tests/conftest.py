"""Test-wide set-up: 8 fake CPU devices so sharding tests run anywhere.

XLA reads the flag once, at backend start, so it must be set before anything imports jax.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture
def highest_precision():
    """fp32 matmuls at full precision, for comparisons with torch at 1e-4."""
    import jax

    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="session")
def tiny_hf_checkpoint(tmp_path_factory):
    """(cfg, folder, torch model): a random tiny Qwen2.5-VL written by transformers, shared by
    the parity and import/export tests (read-only: copy the folder before editing it)."""
    pytest.importorskip("transformers")
    from skinr1_jax.model import tiny_config
    from skinr1_jax.model.convert import write_random_hf_checkpoint

    cfg = tiny_config(300)
    folder = tmp_path_factory.mktemp("hf")
    return cfg, folder, write_random_hf_checkpoint(cfg, folder, seed=0)
