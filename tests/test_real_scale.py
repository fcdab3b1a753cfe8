"""The paper's recipe at real scale, built abstractly (nothing allocated): parameter counts of
Qwen2.5-VL-7B / 3B and of the r=64 LoRA adapters against transformers / PEFT meta-device models,
and per-device memory of the training state on an 8 x 80 GB mesh.

Expected counts come from transformers and peft building the published config.json on the meta
device, never from our code."""

from __future__ import annotations

import json
import math

import jax
import pytest

from configs import skinr1_qwen2_5_vl_7b as recipe
from skinr1_jax.model import (LoraConfig, abstract_variables, config_from_hf, init_variables,
                              qwen2_5_vl_3b_config, qwen2_5_vl_7b_config, tiny_config, unbox)
from skinr1_jax.stages.common import model_config
from skinr1_jax.train import memory, optim
from skinr1_jax.train.sharding import make_mesh
from skinr1_jax.train.state import create_train_state

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

H100 = 80e9

_VISION = {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
           "num_heads": 16, "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2,
           "spatial_patch_size": 14, "temporal_patch_size": 2, "window_size": 112,
           "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2}
_COMMON = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
           "hidden_act": "silu", "max_position_embeddings": 128000, "rms_norm_eps": 1e-06,
           "rope_theta": 1000000.0,
           "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
           "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
           "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
           "video_token_id": 151656, "torch_dtype": "bfloat16", "use_sliding_window": False}
# The released config.json files (flat layout) of Qwen/Qwen2.5-VL-{7B,3B}-Instruct.
QWEN_7B = {**_COMMON, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
           "tie_word_embeddings": False, "vision_config": {**_VISION, "out_hidden_size": 3584}}
QWEN_3B = {**_COMMON, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
           "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936,
           "tie_word_embeddings": True, "vision_config": {**_VISION, "out_hidden_size": 2048}}

# The paper's targets in PEFT terms: every language-model projection and the merger MLP, not
# the ViT blocks (whose MLPs share the gate/up/down_proj names).
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "mlp.0", "mlp.2"]
PEFT_EXCLUDE = r"model\.visual\.blocks\..*"


def _meta_model(hf: dict):
    cfg = transformers.Qwen2_5_VLConfig(**json.loads(json.dumps(hf)))
    with torch.device("meta"):
        return transformers.Qwen2_5_VLForConditionalGeneration(cfg)


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def hf_7b():
    """(total parameters, LoRA r=64 adapter parameters, adapted modules) per transformers/peft."""
    model = _meta_model(QWEN_7B)
    total = sum(p.numel() for p in model.parameters())
    lora_cfg = peft.LoraConfig(r=64, lora_alpha=32, lora_dropout=0.1, target_modules=PEFT_TARGETS,
                               exclude_modules=PEFT_EXCLUDE)
    wrapped = peft.get_peft_model(model, lora_cfg)
    adapter = sum(p.numel() for n, p in wrapped.named_parameters() if ".lora_" in n)
    modules = sum(1 for n, _ in wrapped.named_parameters() if ".lora_A." in n)
    return total, adapter, modules


@pytest.fixture(scope="module")
def recipe_cfg(tmp_path_factory):
    """The ModelConfig the 7B recipe builds from a local Qwen folder's config.json."""
    folder = tmp_path_factory.mktemp("qwen7b")
    (folder / "config.json").write_text(json.dumps(QWEN_7B))
    config = recipe.get_config()
    config.model.hf_dir = str(folder)
    return model_config(config, tokenizer=None)


def test_recipe_builds_paper_settings(recipe_cfg):
    assert recipe_cfg.lora.rank == 64 and recipe_cfg.lora.alpha == 32.0
    assert recipe_cfg.lora.dropout == pytest.approx(0.1)
    assert not recipe_cfg.lora.include_vision_blocks
    assert recipe_cfg.param_dtype == "bfloat16" and recipe_cfg.remat
    # the preset and the config.json path agree on every shape
    assert recipe_cfg.replace(lora=LoraConfig(), param_dtype="float32", dtype="float32",
                              remat=False) == qwen2_5_vl_7b_config()


def test_7b_parameter_count_matches_transformers(hf_7b, recipe_cfg):
    total, _, _ = hf_7b
    ours = unbox(abstract_variables(recipe_cfg))
    assert _count(ours["params"]) == total
    assert abs(total - 8.29e9) < 0.01e9  # the published "8.29B" of Qwen2.5-VL-7B


def test_7b_lora_count_matches_peft(hf_7b, recipe_cfg):
    _, adapter, modules = hf_7b
    lora = unbox(abstract_variables(recipe_cfg))["lora"]
    assert _count(lora) == adapter
    assert len(jax.tree.leaves(lora)) == 2 * modules == 2 * (28 * 7 + 2)


@pytest.mark.parametrize("ours", [qwen2_5_vl_3b_config(), config_from_hf(QWEN_3B)],
                         ids=["preset", "config_json"])
def test_3b_parameter_count_matches_transformers(ours):
    model = _meta_model(QWEN_3B)
    total = sum(p.numel() for p in model.parameters())  # tied lm_head counted once
    assert _count(unbox(abstract_variables(ours))["params"]) == total


def test_estimate_equals_allocated_shards_on_fake_devices():
    """On a tiny model the estimate is exactly what device 0 holds after a real sharded init."""
    cfg = tiny_config(lora=LoraConfig(rank=4))
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    opt = optim.make_optimizer(1e-3, 10)
    state, _ = create_train_state(lambda r: init_variables(cfg, r), opt, mesh, jax.random.key(0),
                                  lora=True)
    device = mesh.devices.flat[0]

    def on_device(tree) -> int:
        return sum(s.data.nbytes for a in jax.tree.leaves(tree)
                   for s in a.addressable_shards if s.device == device)
    est = memory.estimate_memory(cfg, mesh, optimizer=opt)
    assert est.lora and est.num_trainable == _count(state.trainable)
    assert est.frozen_bytes == on_device(state.frozen)
    assert est.trainable_bytes == on_device(state.trainable)
    assert est.opt_bytes == on_device(state.opt_state)
    assert est.frozen_bytes < _count(state.frozen) * 4  # really sharded
    assert memory.estimate_memory(cfg, {"data": 1, "fsdp": 4, "tensor": 2}, optimizer=opt) == est


def test_7b_lora_recipe_fits_8x80gb(hf_7b, recipe_cfg):
    """bf16 base + fp32 adapters + Adam for the adapters only, on fsdp=8."""
    total, adapter, _ = hf_7b
    mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    one = memory.estimate_memory(recipe_cfg, {"data": 1, "fsdp": 1, "tensor": 1},
                                 collection_dtypes={"lora": "float32"})
    # unsharded: bf16 base, fp32 adapters and gradients, two fp32 Adam moments (+ step counts)
    assert one.frozen_bytes == 2 * total
    assert one.trainable_bytes == one.grad_bytes == 4 * adapter
    assert 0 <= one.opt_bytes - 8 * adapter <= 64
    eight = memory.estimate_memory(recipe_cfg, mesh, collection_dtypes={"lora": "float32"})
    assert eight.num_params == total + adapter
    assert eight.frozen_bytes <= 1.01 * one.frozen_bytes / 8
    assert eight.fits(H100, reserve=0.9)  # the state takes < 10%: the rest is for activations
    as_configured = memory.estimate_memory(recipe_cfg, mesh, grad_accum=recipe.EFFECTIVE_BATCH)
    assert as_configured.total_bytes < eight.total_bytes and as_configured.fits(H100, reserve=0.9)


def test_7b_full_finetuning_needs_fsdp(hf_7b):
    """fp32 master weights + gradients + Adam: ~16 bytes per parameter, too much for one
    80 GB device; the FSDP-8 share is the total / 8."""
    total, _, _ = hf_7b
    cfg = qwen2_5_vl_7b_config(param_dtype="float32", dtype="bfloat16")
    one = memory.estimate_memory(cfg, {"data": 1, "fsdp": 1, "tensor": 1})
    assert not one.lora and one.frozen_bytes == 0
    assert 0 <= one.total_bytes - 16 * total <= 64
    assert one.global_bytes == one.total_bytes
    assert not one.fits(H100)
    eight = memory.estimate_memory(cfg, make_mesh({"data": 1, "fsdp": 8, "tensor": 1}))
    assert eight.global_bytes == one.global_bytes
    assert eight.total_bytes == pytest.approx(one.total_bytes / 8, rel=1e-3)
    assert eight.fits(H100, reserve=0.5)


def test_bad_inputs_are_named():
    cfg = tiny_config()
    with pytest.raises(ValueError, match="no -1"):
        memory.estimate_memory(cfg, {"data": -1, "fsdp": 1, "tensor": 1})
    with pytest.raises(ValueError, match="lack axes"):
        memory.estimate_memory(cfg, {"data": 1, "fsdp": 8})
    with pytest.raises(ValueError, match="'lora'"):
        memory.estimate_memory(cfg, {"data": 1, "fsdp": 1, "tensor": 1},
                               collection_dtypes={"lora": "float32"})


def test_cli_table_lists_every_setting_and_mesh(capsys):
    table = memory.main(["--model", "qwen2_5_vl_3b", "--mesh", "1,8,1", "--mesh", "1,4,2"])
    rows = table.splitlines()[2:]
    assert len(rows) == len(memory.SETTINGS) * 2
    assert "| 1,4,2 | 8 |" in rows[1]
    assert capsys.readouterr().out.strip() == table
