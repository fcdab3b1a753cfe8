"""Hugging Face import / export: round trip through transformers, multi-file and sharded loads,
strict key / shape errors, tied embeddings, config.json mapping, and `convert --verify`."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

from skinr1_jax.model import (config_from_hf, config_to_hf, forward, logical_axes,  # noqa: E402
                              qwen2_5_vl_3b_config, qwen2_5_vl_7b_config, tiny_config)
from skinr1_jax.model.convert import (convert, hf_logits, random_batch,  # noqa: E402
                                      write_random_hf_checkpoint)
from skinr1_jax.model.hf_io import CheckpointError, load_hf, save_hf  # noqa: E402

# config.json of Qwen/Qwen2.5-VL-7B-Instruct (flat transformers-4 layout), tokens trimmed
QWEN_7B_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
    "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 128000,
    "max_window_layers": 28, "model_type": "qwen2_5_vl", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
                      "intermediate_size": 3420, "num_heads": 16, "in_chans": 3,
                      "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                      "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                      "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}


pytestmark = pytest.mark.usefixtures("highest_precision")


@pytest.fixture(scope="module")
def hf(tiny_hf_checkpoint):
    return tiny_hf_checkpoint


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values")
            if k in batch}


def test_round_trip_hf_ours_hf_gives_identical_logits(hf, tmp_path):
    cfg, hf_dir, model = hf
    _, variables = load_hf(hf_dir)
    save_hf(cfg, variables, tmp_path)
    again, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(tmp_path), attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ref_state, new_state = model.state_dict(), again.state_dict()
    assert ref_state.keys() == new_state.keys()
    for key in ref_state:
        assert torch.equal(ref_state[key], new_state[key]), key
    batch = random_batch(cfg, ((1, 8, 8),), seed=2)
    np.testing.assert_array_equal(hf_logits(again.eval(), batch), hf_logits(model, batch))


def test_multi_file_checkpoint_loads_onto_shardings(hf, tmp_path):
    cfg, hf_dir, model = hf
    model.save_pretrained(str(tmp_path), max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    mesh = jax.make_mesh((len(jax.devices()),), ("x",))
    rules = {"mlp": "x"}
    specs = logical_axes(cfg)["params"]
    shardings = jax.tree.map(
        lambda spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            *(rules.get(a) for a in spec))), specs,
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    _, sharded = load_hf(tmp_path, shardings={"params": shardings})
    _, single = load_hf(hf_dir)
    up = sharded["params"]["language_model"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert up.sharding == shardings["language_model"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert len(up.addressable_shards) == len(jax.devices())
    jax.tree.map(np.testing.assert_array_equal, sharded, single)


def _broken_copy(hf_dir, tmp_path, edit):
    out = tmp_path / "broken"
    shutil.copytree(hf_dir, out)
    tensors = load_file(str(out / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_missing_tensor_names_key_and_shape(hf, tmp_path):
    _, hf_dir, _ = hf
    key = "model.layers.1.mlp.up_proj.weight"
    out = _broken_copy(hf_dir, tmp_path, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight"
                                              r" \(expected shape \(256, 128\)\)"):
        load_hf(out)


def test_wrong_shape_and_unexpected_tensors_name_key_and_shapes(hf, tmp_path):
    _, hf_dir, _ = hf

    def edit(t):
        t["visual.merger.mlp.2.weight"] = np.zeros((64, 256), np.float32)
        t["model.layers.0.self_attn.rotary.weight"] = np.zeros((3,), np.float32)

    out = _broken_copy(hf_dir, tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        load_hf(out)
    msg = str(err.value)
    assert "tensor visual.merger.mlp.2.weight has shape (64, 256), model expects (128, 256)" in msg
    assert "unexpected tensor model.layers.0.self_attn.rotary.weight" in msg


def test_tied_embeddings_and_bf16_load(tmp_path):
    cfg = tiny_config(300, text={"tie_word_embeddings": True, "num_hidden_layers": 1})
    model = write_random_hf_checkpoint(cfg, tmp_path / "hf", seed=3)
    loaded_cfg, variables = load_hf(tmp_path / "hf")
    assert loaded_cfg.text.tie_word_embeddings and "lm_head" not in variables["params"]
    batch = random_batch(cfg, ((1, 4, 4),), seed=4)
    ours, _ = forward(loaded_cfg, variables, _inputs(batch), grid_thw=batch["grid_thw"])
    np.testing.assert_allclose(ours, hf_logits(model, batch), atol=1e-4)
    save_hf(loaded_cfg, variables, tmp_path / "out")
    again = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "out"),
                                                               attn_implementation="eager").eval()
    np.testing.assert_array_equal(hf_logits(again, batch), hf_logits(model, batch))
    bf_cfg, bf = load_hf(tmp_path / "hf", dtype="bfloat16")
    assert bf_cfg.param_dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf))


def test_config_json_mapping_matches_transformers():
    assert config_from_hf(QWEN_7B_CONFIG) == qwen2_5_vl_7b_config()
    parsed = Qwen2_5_VLConfig(**QWEN_7B_CONFIG).to_dict()  # transformers' reading, nested layout
    assert config_from_hf(parsed) == qwen2_5_vl_7b_config()
    for cfg in (qwen2_5_vl_3b_config(), qwen2_5_vl_7b_config(), tiny_config(1000)):
        back = Qwen2_5_VLConfig(**json.loads(json.dumps(config_to_hf(cfg)))).to_dict()
        assert config_from_hf(back) == cfg
    with pytest.raises(ValueError, match="mrope_section"):
        config_from_hf({**QWEN_7B_CONFIG, "rope_scaling": {"type": "mrope", "mrope_section": [8, 8, 8]}})


def test_convert_verify_writes_params_and_matches(hf, tmp_path):
    from skinr1_jax.train.checkpoint import load_params

    _, hf_dir, _ = hf
    diff = convert(hf_dir, tmp_path / "ckpt", verify=True)
    assert diff is not None and diff <= 1e-4
    restored = load_params(tmp_path / "ckpt")
    _, variables = load_hf(hf_dir)
    jax.tree.map(np.testing.assert_array_equal, restored, variables["params"])
