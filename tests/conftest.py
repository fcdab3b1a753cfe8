"""Test-wide set-up: 8 fake CPU devices so sharding tests run anywhere.

XLA reads the flag once, at backend start, so it must be set before anything imports jax.
"""

import os

from skinr1_jax.train.host import with_cpu_xla_flags  # imports no jax

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The XLA:CPU flags `python -m launch` runs with, so parity is checked under them.
os.environ["XLA_FLAGS"] = with_cpu_xla_flags(os.environ["XLA_FLAGS"])
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


@pytest.fixture(scope="session")
def sampler_tokenizer(tmp_path_factory):
    """A small embedded tokenizer for the sampler and rollout tests."""
    from skinr1_jax.model.tokenizer import build_embedded_tokenizer

    corpus = ["the lesion is a scaly red plaque on the elbow", "melanoma has an irregular border"] * 20
    return build_embedded_tokenizer(corpus, 512, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def sampler_model(sampler_tokenizer):
    """(cfg, variables) of a tiny random VLM whose logits are spread out: random init gives
    near-uniform logits, and a larger head separates argmax and the top-k/top-p supports."""
    import jax

    from skinr1_jax.model import init_variables, tiny_config, unbox

    cfg = tiny_config(sampler_tokenizer.vocab_size, **sampler_tokenizer.model_token_ids())
    variables = unbox(init_variables(cfg, jax.random.key(0)))
    params = dict(variables["params"])
    params["lm_head"] = {"kernel": params["lm_head"]["kernel"] * 10.0}
    return cfg, {**variables, "params": params}
