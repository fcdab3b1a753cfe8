"""Image loading and Qwen2-VL preprocessing in numpy + PIL (no torch).

`preprocess` reproduces transformers' `Qwen2VLImageProcessorPil` bit for bit: smart resize
(bicubic, PIL) to multiples of patch_size * merge_size within [min_pixels, max_pixels],
rescale by 1/255 (float64 then float32), normalise in float32, then patchify into
`(grid_t * grid_h * grid_w, C * temporal_patch_size * P * P)` rows ordered merge-window first.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import PIL.ImageOps

if TYPE_CHECKING:
    from skinr1_jax.model.config import ModelConfig

# OpenAI CLIP statistics, the Qwen2-VL processor defaults.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280


class ImageError(ValueError):
    """An image file that cannot be read or decoded."""


def _to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """RGB view of any PIL mode; transparency is composited over white as transformers does."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # High bit-depth greyscale: PIL's convert("RGB") clips these, so rescale to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(arr8).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(background, rgba).convert("RGB")


def load_image(path_or_bytes: str | os.PathLike | bytes, name: str | None = None) -> np.ndarray:
    """Decode an image file (JPEG, PNG, greyscale, RGBA, palette, EXIF-rotated) to uint8[H, W, 3].

    Raises ImageError naming the file (or `name`) when it is missing, empty or corrupt.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        data = bytes(path_or_bytes)
    else:
        label = name or os.fspath(path_or_bytes)
        try:
            with open(path_or_bytes, "rb") as f:
                data = f.read()
        except FileNotFoundError as e:
            raise ImageError(f"image file not found: {label}") from e
        except OSError as e:
            raise ImageError(f"cannot read image file {label}: {e}") from e
    if not data:
        raise ImageError(f"image file is empty: {label}")
    try:
        with PIL.Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now so truncated data fails here, not later
            img = PIL.ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
            arr = np.array(rgb, dtype=np.uint8)
    except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot decode image {label}: {e}") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"image {label} decoded to unusable shape {arr.shape}")
    return arr


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = DEFAULT_MIN_PIXELS,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Target (h, w): multiples of `factor`, area within [min_pixels, max_pixels], aspect kept."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _as_rgb_array(image: np.ndarray | PIL.Image.Image) -> np.ndarray:
    if isinstance(image, PIL.Image.Image):
        return np.array(_to_rgb(image), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an image as uint8[H, W, 3], got {arr.dtype}{list(arr.shape)}")
    return arr


def patchify(image_chw: np.ndarray, patch_size: int, temporal_patch_size: int,
             merge_size: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """float32[C, H, W] -> (float32[gh * gw, C * Tp * P * P], (1, gh, gw)), rows grouped by merge window."""
    c, h, w = image_chw.shape
    unit = patch_size * merge_size
    if h % unit or w % unit:
        raise ValueError(f"image {h}x{w} is not a multiple of patch_size*merge_size={unit}")
    gh, gw = h // patch_size, w // patch_size
    x = image_chw.reshape(c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, P, P)
    # A still image fills every temporal slot with the same frame.
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal_patch_size, *x.shape[5:]))
    flat = np.ascontiguousarray(x.reshape(gh * gw, c * temporal_patch_size * patch_size * patch_size))
    return flat.astype(np.float32, copy=False), (1, gh, gw)


def preprocess(image: np.ndarray | PIL.Image.Image, *, patch_size: int = 14, temporal_patch_size: int = 2,
               merge_size: int = 2, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS,
               mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
               do_resize: bool = True) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image -> (pixel_values float32[N, 3 * Tp * P * P], grid_thw (1, gh, gw)).

    Equal to transformers' Qwen2-VL PIL image processor with the same arguments. With
    do_resize=False the image sides must already be multiples of patch_size * merge_size.
    """
    arr = _as_rgb_array(image)
    if do_resize:
        h, w = arr.shape[:2]
        th, tw = smart_resize(h, w, patch_size * merge_size, min_pixels, max_pixels)
        arr = np.array(PIL.Image.fromarray(arr).resize((tw, th), resample=PIL.Image.Resampling.BICUBIC))
    x = arr.astype(np.float64) * (1.0 / 255.0)
    x = x.astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return patchify(x.transpose(2, 0, 1), patch_size, temporal_patch_size, merge_size)


def preprocess_for_model(image: np.ndarray | PIL.Image.Image, cfg: ModelConfig,
                         min_pixels: int = DEFAULT_MIN_PIXELS,
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int, int]]:
    """`preprocess` with the patch geometry of `cfg.vision`."""
    v = cfg.vision
    return preprocess(image, patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                      merge_size=v.spatial_merge_size, min_pixels=min_pixels, max_pixels=max_pixels)


def model_grid(image: np.ndarray | PIL.Image.Image, cfg: ModelConfig,
               min_pixels: int = DEFAULT_MIN_PIXELS,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int, int]:
    """The grid_thw `preprocess_for_model` gives `image`, from its size alone (no resampling):
    what a sequence length needs."""
    v = cfg.vision
    if isinstance(image, PIL.Image.Image):
        h, w = image.height, image.width   # no RGB conversion just to read the size
    else:
        h, w = _as_rgb_array(image).shape[:2]
    th, tw = smart_resize(h, w, v.patch_size * v.spatial_merge_size, min_pixels, max_pixels)
    return 1, th // v.patch_size, tw // v.patch_size


def num_image_tokens(grid_thw: tuple[int, int, int], merge_size: int) -> int:
    """How many <|image_pad|> tokens the language model sees for one image."""
    t, h, w = grid_thw
    return t * h * w // (merge_size * merge_size)
