from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest

from skinr1_jax.model.image_processing import (
    ImageError,
    load_image,
    num_image_tokens,
    preprocess,
    smart_resize,
)

hf_pil = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")


def _hf(img, **kw):
    proc = hf_pil.Qwen2VLImageProcessorPil(**kw)
    out = proc(images=[img], return_tensors="np")
    return out["pixel_values"], tuple(int(v) for v in out["image_grid_thw"][0])


@pytest.mark.parametrize("hw", [(37, 53), (101, 29), (5, 9), (300, 211), (64, 64)])
@pytest.mark.parametrize("geom", [
    dict(min_pixels=32 * 32, max_pixels=64 * 64, patch_size=14, merge_size=2, temporal_patch_size=2),
    dict(min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, merge_size=2, temporal_patch_size=2),
    dict(min_pixels=16 * 16, max_pixels=48 * 48, patch_size=8, merge_size=2, temporal_patch_size=1),
])
def test_preprocess_equals_hf_processor(hw, geom):
    rng = np.random.default_rng(hw[0] * 1000 + hw[1])
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    ref_pv, ref_grid = _hf(img, **geom)
    pv, grid = preprocess(img, **geom)
    assert grid == ref_grid
    assert pv.dtype == np.float32 and pv.shape == ref_pv.shape
    # Both resize with PIL bicubic and normalise in float32: bit-identical.
    np.testing.assert_array_equal(pv, ref_pv)
    assert num_image_tokens(grid, geom["merge_size"]) * geom["merge_size"] ** 2 == pv.shape[0]


def test_no_resize_path_equals_hf():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)
    ref_pv, ref_grid = _hf(img, do_resize=False)
    pv, grid = preprocess(img, do_resize=False)
    assert grid == ref_grid == (1, 4, 6)
    np.testing.assert_array_equal(pv, ref_pv)
    with pytest.raises(ValueError, match="multiple of"):
        preprocess(img[:50], do_resize=False)


def test_pil_rgba_input_matches_hf():
    rng = np.random.default_rng(2)
    rgba = PIL.Image.fromarray(rng.integers(0, 256, (40, 31, 4), dtype=np.uint8))
    ref_pv, _ = _hf(rgba, min_pixels=32 * 32, max_pixels=64 * 64)
    pv, _ = preprocess(rgba, min_pixels=32 * 32, max_pixels=64 * 64)
    np.testing.assert_array_equal(pv, ref_pv)


def test_patch_layout_rows_are_merge_windows():
    # A 2x2 merge window of patches must occupy 4 consecutive rows.
    img = np.zeros((56, 56, 3), np.uint8)
    img[:28, 28:] = 255  # top-right merge window bright
    pv, grid = preprocess(img, do_resize=False)
    assert grid == (1, 4, 4)
    bright = pv.mean(axis=1) > 0
    np.testing.assert_array_equal(np.flatnonzero(bright), [4, 5, 6, 7])


def test_smart_resize_bounds():
    for h, w in [(1, 1), (7, 900), (1000, 1000), (28, 28), (333, 17)]:
        th, tw = smart_resize(h, w, 28, 56 * 56, 28 * 28 * 64)
        assert th % 28 == 0 and tw % 28 == 0
        assert th * tw <= 28 * 28 * 64
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 500)


def _encode(img: PIL.Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def rgb():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def test_load_png_exact_and_jpeg(tmp_path, rgb):
    p = tmp_path / "a.png"
    p.write_bytes(_encode(PIL.Image.fromarray(rgb), "PNG"))
    np.testing.assert_array_equal(load_image(p), rgb)
    smooth = np.repeat(np.linspace(0, 255, 30, dtype=np.uint8)[None, :, None], 20, 0).repeat(3, 2)
    j = tmp_path / "a.jpg"
    j.write_bytes(_encode(PIL.Image.fromarray(smooth), "JPEG", quality=95))
    out = load_image(str(j))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth).max() < 12


def test_load_grayscale_palette_rgba_and_16bit(rgb):
    gray = rgb[..., 0]
    out = load_image(_encode(PIL.Image.fromarray(gray), "PNG"))
    np.testing.assert_array_equal(out, np.stack([gray] * 3, -1))

    pal = PIL.Image.fromarray(rgb).quantize(colors=16)
    out = load_image(_encode(pal, "PNG"))
    np.testing.assert_array_equal(out, np.array(pal.convert("RGB")))

    rgba = np.concatenate([rgb, np.zeros((20, 30, 1), np.uint8)], -1)
    rgba[:10, :, 3] = 255  # top half opaque, bottom half fully transparent
    out = load_image(_encode(PIL.Image.fromarray(rgba), "PNG"))
    np.testing.assert_array_equal(out[:10], rgb[:10])
    assert (out[10:] == 255).all()  # transparent composites over white

    g16 = (gray.astype(np.uint16) * 257)
    out = load_image(_encode(PIL.Image.fromarray(g16), "PNG"))
    np.testing.assert_array_equal(out[..., 0], gray)


def test_load_exif_rotated(rgb):
    img = PIL.Image.fromarray(rgb)  # 20 high, 30 wide
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    out = load_image(_encode(img, "PNG", exif=exif))
    assert out.shape == (30, 20, 3)
    np.testing.assert_array_equal(out, np.rot90(rgb, k=-1))


def test_bad_files_name_the_file(tmp_path, rgb):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="nope.png"):
        load_image(missing)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg"):
        load_image(empty)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 3)
    with pytest.raises(ImageError, match="corrupt.jpg"):
        load_image(corrupt)
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(_encode(PIL.Image.fromarray(rgb), "PNG")[:60])
    with pytest.raises(ImageError, match="trunc.png"):
        load_image(truncated)
    with pytest.raises(ImageError, match="upload-7"):
        load_image(b"garbage", name="upload-7")
