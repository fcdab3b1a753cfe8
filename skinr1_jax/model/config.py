"""Model configuration: frozen dataclasses, presets, and the Hugging Face config.json mapping.

`ModelConfig` is hashable, so it can be a static argument of jitted functions and a Flax
module attribute.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

VISION_ROPE_THETA = 10000.0  # transformers' Qwen2.5-VL vision tower default (rope_type "axial")
LANGUAGE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MERGER_TARGETS = ("mlp.0", "mlp.2")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    in_channels: int = 3
    tokens_per_second: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 128000

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """PEFT-style LoRA. `target_modules`: module-name suffixes (PEFT list semantics: a module is
    targeted when its name equals an entry or ends with "." + entry) or one regex string (PEFT
    semantics: re.fullmatch on the whole module name). Module names are transformers 5 names,
    e.g. "model.language_model.layers.0.self_attn.q_proj", "model.visual.merger.mlp.0".
    `include_vision_blocks=False` keeps the ViT blocks (whose MLP is also named gate/up/down_proj)
    out of list targets."""

    rank: int = 0
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = LANGUAGE_TARGETS + MERGER_TARGETS
    include_vision_blocks: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def targets(self, module_name: str) -> bool:
        """Whether the Linear called `module_name` (transformers 5 naming) gets a LoRA adapter."""
        if self.rank <= 0:
            return False
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, module_name) is not None
        if not self.include_vision_blocks and module_name.startswith("model.visual.blocks."):
            return False
        return any(module_name == t or module_name.endswith("." + t) for t in self.target_modules)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    dtype: str = "float32"        # compute dtype: activations, norms, softmax, residual stream
    param_dtype: str = "float32"  # parameter dtype
    # Operand dtype of every matrix product (None: `dtype`). "bfloat16" with dtype "float32"
    # is mixed precision as torch.autocast does it: bf16 products, f32 everything else.
    matmul_dtype: str | None = None
    remat: bool = False
    lora: LoraConfig = LoraConfig()

    @property
    def product_dtype(self) -> str:
        """The dtype matrix products take their operands in."""
        return self.matmul_dtype or self.dtype

    def replace(self, **changes: Any) -> ModelConfig:
        return _replace_nested(self, changes)


def _replace_nested(cfg: Any, changes: dict[str, Any]) -> Any:
    """dataclasses.replace that accepts dicts for nested dataclass fields."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    out = {}
    for key, value in changes.items():
        if key not in fields:
            raise ValueError(f"{type(cfg).__name__} has no field {key!r} (fields: {sorted(fields)})")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = _replace_nested(current, value)
        elif isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return dataclasses.replace(cfg, **out)


def tiny_config(vocab_size: int = 512, **overrides: Any) -> ModelConfig:
    """A tiny random-init model that runs in seconds on a 2-core CPU.

    Vision: 8-px patches, 2x2 merge, 32-px windows (64-px images give 4 windows; block 0 is
    windowed, block 1 full). Text: 2 layers, hidden 128, 4 heads / 2 kv heads, head_dim 32.
    Special tokens take the last four ids (override them to match a tokenizer).
    """
    cfg = ModelConfig(
        vision=VisionConfig(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                            patch_size=8, temporal_patch_size=2, spatial_merge_size=2,
                            window_size=32, fullatt_block_indexes=(1,), out_hidden_size=128,
                            in_channels=3),
        text=TextConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=256,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        rms_norm_eps=1e-6, rope_theta=10000.0, mrope_section=(4, 6, 6),
                        tie_word_embeddings=False, max_position_embeddings=4096),
        vision_start_token_id=vocab_size - 4,
        vision_end_token_id=vocab_size - 3,
        image_token_id=vocab_size - 2,
        video_token_id=vocab_size - 1,
    )
    return cfg.replace(**overrides) if overrides else cfg


def qwen2_5_vl_3b_config(**overrides: Any) -> ModelConfig:
    """Qwen/Qwen2.5-VL-3B-Instruct shapes."""
    cfg = ModelConfig(
        vision=VisionConfig(out_hidden_size=2048),
        text=TextConfig(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                        num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                        tie_word_embeddings=True),
    )
    return cfg.replace(**overrides) if overrides else cfg


def qwen2_5_vl_7b_config(**overrides: Any) -> ModelConfig:
    """Qwen/Qwen2.5-VL-7B-Instruct shapes (the Skin-R1 base model)."""
    cfg = ModelConfig()
    return cfg.replace(**overrides) if overrides else cfg


def _rope_params(d: dict[str, Any]) -> dict[str, Any]:
    return d.get("rope_parameters") or d.get("rope_scaling") or {}


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """ModelConfig from a Qwen2.5-VL config.json dict (transformers 5 nested `text_config` or the
    flat layout of the released Qwen checkpoints)."""
    if hf.get("model_type") not in (None, "qwen2_5_vl"):
        raise ValueError(f"config.json model_type is {hf.get('model_type')!r}, expected 'qwen2_5_vl'")
    text = dict(hf)
    if isinstance(hf.get("text_config"), dict):
        text = {**hf, **hf["text_config"]}
    vision = hf.get("vision_config") or {}
    for part, d in (("text", text), ("vision", vision)):
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config.json {part} hidden_act={act!r}: only 'silu' is supported")
    rope = _rope_params(text)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ValueError(f"config.json rope type {rope_type!r}: only default/mrope is supported")
    vision_rope = _rope_params(vision)
    if vision_rope.get("rope_theta", VISION_ROPE_THETA) != VISION_ROPE_THETA:
        raise ValueError(f"config.json vision rope_theta={vision_rope['rope_theta']}: "
                         f"only {VISION_ROPE_THETA} is supported")
    v = VisionConfig()
    vcfg = VisionConfig(
        depth=vision.get("depth", v.depth),
        hidden_size=vision.get("hidden_size", v.hidden_size),
        intermediate_size=vision.get("intermediate_size", v.intermediate_size),
        num_heads=vision.get("num_heads", v.num_heads),
        patch_size=vision.get("patch_size", vision.get("spatial_patch_size", v.patch_size)),
        temporal_patch_size=vision.get("temporal_patch_size", v.temporal_patch_size),
        spatial_merge_size=vision.get("spatial_merge_size", v.spatial_merge_size),
        window_size=vision.get("window_size", v.window_size),
        fullatt_block_indexes=tuple(vision.get("fullatt_block_indexes", v.fullatt_block_indexes)),
        out_hidden_size=vision.get("out_hidden_size", v.out_hidden_size),
        in_channels=vision.get("in_channels", vision.get("in_chans", v.in_channels)),
        tokens_per_second=vision.get("tokens_per_second", v.tokens_per_second),
    )
    t = TextConfig()
    tie = bool(hf.get("tie_word_embeddings", False) or text.get("tie_word_embeddings", False))
    tcfg = TextConfig(
        vocab_size=text.get("vocab_size", t.vocab_size),
        hidden_size=text.get("hidden_size", t.hidden_size),
        intermediate_size=text.get("intermediate_size", t.intermediate_size),
        num_hidden_layers=text.get("num_hidden_layers", t.num_hidden_layers),
        num_attention_heads=text.get("num_attention_heads", t.num_attention_heads),
        num_key_value_heads=text.get("num_key_value_heads") or text.get("num_attention_heads",
                                                                      t.num_key_value_heads),
        rms_norm_eps=text.get("rms_norm_eps", t.rms_norm_eps),
        rope_theta=rope.get("rope_theta", text.get("rope_theta", t.rope_theta)),
        mrope_section=tuple(rope.get("mrope_section", t.mrope_section)),
        tie_word_embeddings=tie,
        max_position_embeddings=text.get("max_position_embeddings", t.max_position_embeddings),
    )
    m = ModelConfig()
    cfg = ModelConfig(
        vision=vcfg, text=tcfg,
        image_token_id=hf.get("image_token_id", m.image_token_id),
        video_token_id=hf.get("video_token_id", m.video_token_id),
        vision_start_token_id=hf.get("vision_start_token_id", m.vision_start_token_id),
        vision_end_token_id=hf.get("vision_end_token_id", m.vision_end_token_id),
    )
    validate(cfg)
    return cfg.replace(**overrides) if overrides else cfg


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A transformers 5 config.json dict for `Qwen2_5_VLForConditionalGeneration`."""
    v, t = cfg.vision, cfg.text
    torch_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[cfg.param_dtype]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "dtype": torch_dtype,
        "image_token_id": cfg.image_token_id,
        "video_token_id": cfg.video_token_id,
        "vision_start_token_id": cfg.vision_start_token_id,
        "vision_end_token_id": cfg.vision_end_token_id,
        "tie_word_embeddings": t.tie_word_embeddings,
        "text_config": {
            "model_type": "qwen2_5_vl_text",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "hidden_act": "silu",
            "rms_norm_eps": t.rms_norm_eps,
            "max_position_embeddings": t.max_position_embeddings,
            "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta,
                                "mrope_section": list(t.mrope_section)},
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "bos_token_id": None,
            "eos_token_id": None,
            "pad_token_id": None,
        },
        "vision_config": {
            "model_type": "qwen2_5_vl_vision",
            "depth": v.depth,
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads,
            "hidden_act": "silu",
            "patch_size": v.patch_size,
            "temporal_patch_size": v.temporal_patch_size,
            "spatial_merge_size": v.spatial_merge_size,
            "window_size": v.window_size,
            "fullatt_block_indexes": list(v.fullatt_block_indexes),
            "out_hidden_size": v.out_hidden_size,
            "in_channels": v.in_channels,
            "tokens_per_second": v.tokens_per_second,
            "rope_parameters": {"rope_type": "axial", "rope_theta": VISION_ROPE_THETA},
        },
    }


def validate(cfg: ModelConfig) -> None:
    """Raise ValueError naming the inconsistent fields."""
    v, t = cfg.vision, cfg.text
    if v.hidden_size % v.num_heads:
        raise ValueError(f"vision.hidden_size={v.hidden_size} not divisible by num_heads={v.num_heads}")
    if v.head_dim % 4:
        raise ValueError(f"vision head_dim={v.head_dim} must be a multiple of 4 (2-D rotary)")
    if t.hidden_size % t.num_attention_heads:
        raise ValueError(f"text.hidden_size={t.hidden_size} not divisible by "
                         f"num_attention_heads={t.num_attention_heads}")
    if t.num_attention_heads % t.num_key_value_heads:
        raise ValueError(f"text.num_attention_heads={t.num_attention_heads} not divisible by "
                         f"num_key_value_heads={t.num_key_value_heads}")
    if sum(t.mrope_section) * 2 != t.head_dim:
        raise ValueError(f"text.mrope_section={t.mrope_section} must sum to head_dim/2={t.head_dim // 2}")
    if v.out_hidden_size != t.hidden_size:
        raise ValueError(f"vision.out_hidden_size={v.out_hidden_size} != text.hidden_size={t.hidden_size}")
    if cfg.dtype not in ("float32", "bfloat16") or cfg.param_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype={cfg.dtype!r} / param_dtype={cfg.param_dtype!r}: use float32 or bfloat16")
    if cfg.matmul_dtype not in (None, "float32", "bfloat16"):
        raise ValueError(f"matmul_dtype={cfg.matmul_dtype!r}: use None, float32 or bfloat16")


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Plain JSON-able dict of every field (our own format; `config_to_hf` is transformers')."""
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Inverse of `config_to_dict`; unknown fields are an error naming them."""
    nested = {"vision": VisionConfig, "text": TextConfig, "lora": LoraConfig}
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(f"model config has unknown fields {unknown}")
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key in nested:
            sub_fields = {f.name for f in dataclasses.fields(nested[key])}
            bad = sorted(set(value) - sub_fields)
            if bad:
                raise ValueError(f"model config '{key}' has unknown fields {bad}")
            value = nested[key](**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in value.items()})
        kwargs[key] = value
    return ModelConfig(**kwargs)
