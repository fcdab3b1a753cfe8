"""LoRA: PEFT initialisation and targeting semantics, PEFT adapter import (separate and merged)
with logit parity against `peft`, export back to a folder `peft` loads, and clear errors."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

from skinr1_jax.model import (abstract_variables, forward, init_variables, logical_axes,  # noqa: E402
                              tiny_config, unbox)
from skinr1_jax.model.convert import (convert, hf_logits, random_batch,  # noqa: E402
                                      write_random_hf_checkpoint)
from skinr1_jax.model.hf_io import CheckpointError, load_hf, module_name  # noqa: E402
from skinr1_jax.model.peft_io import load_adapter, save_adapter  # noqa: E402

# The paper's targets: the language model's projections and the vision merger, not the ViT.
PAPER_TARGETS = (r"model\.(language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
                 r"|visual\.merger\.mlp\.[02])")


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def _lora_modules(variables) -> set[str]:
    paths = jax.tree_util.tree_flatten_with_path(unbox(variables)["lora"])[0]
    return {module_name(tuple(k.key for k in p[:-1]) + ("kernel",)) for p, _ in paths}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    cfg = tiny_config(300)
    root = tmp_path_factory.mktemp("peft")
    write_random_hf_checkpoint(cfg, root / "base", seed=5)
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(root / "base"),
                                                              attn_implementation="eager")
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=PAPER_TARGETS))
    torch.manual_seed(6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn_like(p))  # nonzero B so the adapter matters
    model.eval()
    model.save_pretrained(str(root / "adapter"))
    batch = random_batch(cfg, ((1, 8, 8), (1, 4, 4)), seed=7, batch_size=2)
    return cfg, root, model, batch, hf_logits(model, batch)


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values")}


def _assert_close_on_real(ours, ref, batch, atol=1e-4):
    real = batch["attention_mask"].astype(bool)
    assert np.max(np.abs(np.asarray(ours)[real] - ref[real])) <= atol


def test_default_targets_init_and_axes_follow_peft():
    cfg = tiny_config(300, lora={"rank": 4, "alpha": 8.0})
    variables = init_variables(cfg, jax.random.key(0))
    modules = _lora_modules(variables)
    assert "model.visual.merger.mlp.0" in modules and "model.language_model.layers.1.mlp.down_proj" in modules
    assert not any(m.startswith("model.visual.blocks.") for m in modules)  # ViT blocks excluded
    assert len(modules) == 2 * 7 + 2
    with_vit = _lora_modules(abstract_variables(cfg.replace(lora={"include_vision_blocks": True})))
    assert "model.visual.blocks.0.mlp.gate_proj" in with_vit
    lora = unbox(variables)["lora"]["language_model"]["layers_0"]["mlp"]["down_proj"]
    assert np.all(np.asarray(lora["lora_b"]) == 0)
    a = np.asarray(lora["lora_a"])  # [in=256, r]: PEFT's kaiming-uniform bound 1/sqrt(in)
    assert a.shape == (256, 4) and np.abs(a).max() <= 1 / 16 and np.abs(a).max() > 0.8 / 16
    axes = logical_axes(variables)["lora"]["language_model"]["layers_0"]["mlp"]["down_proj"]
    assert tuple(axes["lora_a"]) == ("mlp", "lora_rank") and tuple(axes["lora_b"]) == ("lora_rank", "embed")
    batch = random_batch(cfg, ((1, 4, 4),), seed=1)
    with_lora, _ = forward(cfg, variables, _inputs(batch), grid_thw=batch["grid_thw"])
    without, _ = forward(cfg.replace(lora={"rank": 0}), {"params": variables["params"]},
                         _inputs(batch), grid_thw=batch["grid_thw"])
    np.testing.assert_allclose(with_lora, without, atol=1e-6)  # B = 0: starts as identity


def test_peft_adapter_separate_and_merged_match_peft(adapter):
    cfg, root, _, batch, ref = adapter
    base_cfg, base = load_hf(root / "base")
    lora_cfg, variables = load_adapter(root / "adapter", base_cfg, base)
    assert lora_cfg.lora.rank == 4 and lora_cfg.lora.scaling == 2.0
    # the paper's regex in peft picks exactly our default list targets
    assert _lora_modules(variables) == _lora_modules(abstract_variables(tiny_config(300, lora={"rank": 4})))
    ours, _ = forward(lora_cfg, variables, _inputs(batch), grid_thw=batch["grid_thw"])
    _assert_close_on_real(ours, ref, batch)
    plain, _ = forward(base_cfg, base, _inputs(batch), grid_thw=batch["grid_thw"])
    real = batch["attention_mask"].astype(bool)
    assert np.abs(np.asarray(plain)[real] - ref[real]).max() > 1e-2  # the adapter changes logits

    merged_cfg, merged = load_adapter(root / "adapter", base_cfg, base, merge=True)
    assert merged_cfg.lora.rank == 0 and "lora" not in merged
    ours, _ = forward(merged_cfg, merged, _inputs(batch), grid_thw=batch["grid_thw"])
    _assert_close_on_real(ours, ref, batch)


def test_save_adapter_round_trip_loads_in_peft(adapter, tmp_path):
    cfg, root, _, batch, ref = adapter
    base_cfg, base = load_hf(root / "base")
    lora_cfg, variables = load_adapter(root / "adapter", base_cfg, base)
    save_adapter(lora_cfg, variables, tmp_path)
    original = load_file(str(root / "adapter" / "adapter_model.safetensors"))
    written = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert original.keys() == written.keys()
    for key in original:
        np.testing.assert_array_equal(original[key], written[key])
    fresh = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(root / "base"),
                                                               attn_implementation="eager")
    reloaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    np.testing.assert_allclose(hf_logits(reloaded, batch), ref, atol=1e-6)


def test_transformers4_key_names_and_dropout(adapter, tmp_path):
    cfg, root, _, batch, ref = adapter
    shutil.copytree(root / "adapter", tmp_path / "old")
    path = tmp_path / "old" / "adapter_model.safetensors"
    renamed = {k.replace("base_model.model.model.language_model.", "base_model.model.model.")
                .replace("base_model.model.model.visual.", "base_model.model.visual."): v
               for k, v in load_file(str(path)).items()}
    save_file(renamed, str(path))
    conf = json.loads((tmp_path / "old" / "adapter_config.json").read_text())
    conf["lora_dropout"] = 0.5
    (tmp_path / "old" / "adapter_config.json").write_text(json.dumps(conf))
    base_cfg, base = load_hf(root / "base")
    lora_cfg, variables = load_adapter(tmp_path / "old", base_cfg, base)
    ours, _ = forward(lora_cfg, variables, _inputs(batch), grid_thw=batch["grid_thw"])
    _assert_close_on_real(ours, ref, batch)  # dropout is off when deterministic
    kw = dict(grid_thw=batch["grid_thw"], deterministic=False)
    d1, _ = forward(lora_cfg, variables, _inputs(batch), rngs={"dropout": jax.random.key(1)}, **kw)
    d2, _ = forward(lora_cfg, variables, _inputs(batch), rngs={"dropout": jax.random.key(1)}, **kw)
    d3, _ = forward(lora_cfg, variables, _inputs(batch), rngs={"dropout": jax.random.key(2)}, **kw)
    np.testing.assert_array_equal(d1, d2)
    assert np.abs(np.asarray(d1) - np.asarray(d3)).max() > 1e-3
    assert np.abs(np.asarray(d1) - np.asarray(ours)).max() > 1e-3


def test_bad_adapters_name_the_tensor(adapter, tmp_path):
    _, root, _, _, _ = adapter
    base_cfg, base = load_hf(root / "base")
    shutil.copytree(root / "adapter", tmp_path / "bad")
    path = tmp_path / "bad" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = "base_model.model.model.language_model.layers.0.self_attn.k_proj.lora_B.weight"
    tensors[key] = np.zeros((32, 4), np.float32)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"k_proj\.lora_B\.weight has shape \(32, 4\), "
                                              r"model expects \(64, 4\)"):
        load_adapter(tmp_path / "bad", base_cfg, base)
    tensors.pop(key)
    tensors["base_model.model.model.language_model.layers.7.mlp.up_proj.lora_A.weight"] = \
        np.zeros((4, 128), np.float32)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"layers\.7\.mlp\.up_proj is not a Linear"):
        load_adapter(tmp_path / "bad", base_cfg, base)
    conf = json.loads((tmp_path / "bad" / "adapter_config.json").read_text())
    (tmp_path / "bad" / "adapter_config.json").write_text(json.dumps({**conf, "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora=True"):
        load_adapter(tmp_path / "bad", base_cfg, base)


def test_load_hf_with_lora_config_adds_fresh_adapter(adapter):
    _, root, _, _, _ = adapter
    cfg, variables = load_hf(root / "base", cfg=tiny_config(300, lora={"rank": 2}))
    assert _lora_modules(variables) == _lora_modules(abstract_variables(cfg))
    lora = variables["lora"]["visual"]["merger"]["mlp_0"]
    assert lora["lora_a"].shape == (256, 2) and np.all(np.asarray(lora["lora_b"]) == 0)
    assert 0 < np.abs(np.asarray(lora["lora_a"])).max() <= 1 / 16


def test_convert_with_adapter_verifies_against_peft(adapter, tmp_path):
    from skinr1_jax.train.checkpoint import load_params

    _, root, _, _, _ = adapter
    diff = convert(root / "base", tmp_path / "ckpt", verify=True, adapter_dir=root / "adapter")
    assert diff is not None and diff <= 1e-4
    base_cfg, base = load_hf(root / "base")
    _, merged = load_adapter(root / "adapter", base_cfg, base, merge=True)
    jax.tree.map(np.testing.assert_array_equal, load_params(tmp_path / "ckpt"), merged["params"])
