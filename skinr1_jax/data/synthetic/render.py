"""Procedural clinical-photo-like rendering of a skin lesion from a disease profile.

`render_image(profile, skin_type, rng, size)` paints a skin background of a Fitzpatrick type
(tone, low-frequency lighting, texture, pores or hair) and the lesions its profile describes:
morphology -> shape, size and a height map (shaded by one light), colours relative to the skin
tone, surface textures, border sharpness and the arrangement of lesions. Every image shows a random
non-empty subset of the profile's words per field, and returns exactly those as ground-truth
concepts. A `Signature` (see `signature.py`) adds the per-disease cues that keep siblings
separable and the per-subgroup family style that keeps them confusable.

Everything is numpy on small windows around each lesion, plus PIL for anti-aliased lines, blur
and JPEG, so a 64 px image takes a few milliseconds.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from skinr1_jax.knowledge.vocab import FEATURE_FIELDS

# Fields the renderer draws; `sites` is not visible in a close-up and is never reported.
RENDERED_FIELDS = ("morphology", "colors", "surface", "border", "configuration", "size", "elevation")
# Fields with one value per lesion (several lesions can show several values).
_PER_LESION = ("morphology", "size", "elevation", "border")

# sRGB base tones of Fitzpatrick types I-VI (0..1).
SKIN_TONES = np.array([
    (0.96, 0.81, 0.75), (0.9, 0.73, 0.6), (0.80, 0.61, 0.45),
    (0.65, 0.45, 0.31), (0.45, 0.29, 0.19), (0.27, 0.17, 0.12),
], np.float32)


@dataclass(frozen=True)
class Acquisition:
    """Camera conditions; blur and noise are in pixels / 0..255 units at 64 px and scale with size."""
    blur: float = 0.0
    exposure: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise: float = 0.0
    jpeg_quality: int = 0          # 0 = no JPEG round trip


@dataclass(frozen=True)
class Signature:
    """Deterministic per-disease cues layered on a profile (see signature.py for how they are made).

    anchors: (field, word) pairs every image of the disease shows (its sibling-separating cues).
    tint: per-channel lesion colour multiplier shared by a subgroup (family resemblance).
    aspect: lesion ellipse aspect range shared by a subgroup.
    lobes: angular frequency of the lesion outline's wobble, shared by a subgroup.
    """
    anchors: tuple[tuple[str, str], ...] = ()
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    aspect: tuple[float, float] = (0.7, 1.0)
    lobes: int = 3


def sample_acquisition(rng: np.random.Generator, ood: bool = False) -> Acquisition:
    """Mild phone/atlas conditions, or (ood) heavy blur, strong colour cast and low JPEG quality."""
    if ood:
        cast = tuple(float(x) for x in 1.0 + rng.uniform(-0.18, 0.18, 3))
        return Acquisition(blur=float(rng.uniform(0.9, 1.8)), exposure=float(rng.uniform(0.7, 1.3)),
                           cast=cast, noise=float(rng.uniform(4, 9)), jpeg_quality=int(rng.integers(25, 55)))
    cast = tuple(float(x) for x in 1.0 + rng.uniform(-0.04, 0.04, 3))
    return Acquisition(blur=float(rng.uniform(0.0, 0.5)), exposure=float(rng.uniform(0.9, 1.1)),
                       cast=cast, noise=float(rng.uniform(1, 3)), jpeg_quality=int(rng.integers(75, 96)))


# ---- colours ---------------------------------------------------------------------------------
def _mix(a: np.ndarray, b: Sequence[float], t: float) -> np.ndarray:
    return a * (1 - t) + np.asarray(b, np.float32) * t


def color_rgb(word: str, skin: np.ndarray) -> np.ndarray:
    """A colour word as RGB on this skin: pigment and blood colours darken with the skin tone."""
    s = np.asarray(skin, np.float32)
    if word == "skin-colored":
        return _mix(s * 1.04, (0.9, 0.7, 0.65), 0.1)
    if word == "pink":
        return _mix(s, (0.97, 0.55, 0.62), 0.55)
    if word == "red":
        return _mix(s * (1.0, 0.42, 0.42), (0.78, 0.1, 0.12), 0.55)
    if word == "salmon":
        return _mix(s, (0.98, 0.58, 0.42), 0.6)
    if word == "violaceous":
        return _mix(s * (0.8, 0.55, 0.8), (0.58, 0.25, 0.52), 0.6)
    if word == "purple":
        return _mix(s * 0.6, (0.38, 0.1, 0.4), 0.75)
    if word == "brown":
        return s * (0.6, 0.46, 0.36)
    if word == "dark brown":
        return _mix(s * (0.36, 0.25, 0.18), (0.22, 0.12, 0.07), 0.4)
    if word == "black":
        return _mix(s * 0.2, (0.06, 0.05, 0.05), 0.8)
    if word == "blue":
        return _mix(s * 0.5, (0.22, 0.3, 0.52), 0.75)
    if word == "gray":
        return _mix(s * 0.7, (0.5, 0.5, 0.53), 0.65)
    if word == "yellow":
        return _mix(s, (0.96, 0.83, 0.32), 0.65)
    if word == "white":
        return _mix(s, (0.96, 0.95, 0.92), 0.8)
    if word == "hypopigmented":
        return _mix(s, (0.97, 0.93, 0.9), 0.38)
    if word == "depigmented":
        return _mix(s, (0.98, 0.9, 0.87), 0.9)
    if word == "translucent":
        return _mix(s, (1.0, 0.93, 0.9), 0.3)
    raise ValueError(f"renderer has no colour {word!r}; expected one of {FEATURE_FIELDS['colors']}")


# ---- noise and geometry helpers --------------------------------------------------------------
def value_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth noise in [0, 1]: a random (cells+2)^2 grid bilinearly upsampled to h x w."""
    n = int(np.ceil(cells)) + 2
    grid = rng.random((n, n), dtype=np.float32)
    ys = np.linspace(0, cells, h, dtype=np.float32) + rng.random(dtype=np.float32)
    xs = np.linspace(0, cells, w, dtype=np.float32) + rng.random(dtype=np.float32)
    y0, x0 = ys.astype(np.int32), xs.astype(np.int32)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass
class _Canvas:
    size: int
    skin: np.ndarray                   # base tone (3,)
    rgb: np.ndarray                    # f32[S, S, 3]
    height: np.ndarray                 # f32[S, S], pixels
    spec: np.ndarray                   # f32[S, S], specular strength
    lines: dict = field(default_factory=dict)   # colour tuple -> (PIL "L" image at 2x, drawer)

    def line_layer(self, color: tuple[float, float, float]) -> ImageDraw.ImageDraw:
        if color not in self.lines:
            img = Image.new("L", (2 * self.size, 2 * self.size), 0)
            self.lines[color] = (img, ImageDraw.Draw(img))
        return self.lines[color][1]


def _polyline(rng: np.random.Generator, x: float, y: float, length: float, steps: int,
              wiggle: float) -> list[tuple[float, float]]:
    ang = rng.uniform(0, 2 * np.pi)
    turns = np.cumsum(rng.normal(0, wiggle, steps)) + ang
    seg = length / steps
    xs = x + np.concatenate([[0], np.cumsum(seg * np.cos(turns))])
    ys = y + np.concatenate([[0], np.cumsum(seg * np.sin(turns))])
    return [(2 * float(a), 2 * float(b)) for a, b in zip(xs, ys)]


# ---- the lesion ------------------------------------------------------------------------------
@dataclass
class _Lesion:
    cx: float
    cy: float
    radius: float                      # pixels
    angle: float
    aspect: float
    morphology: str | None
    overlays: tuple[str, ...]          # extra morphologies drawn on top (solitary lesions)
    colors: tuple[str, ...]
    surface: tuple[str, ...]
    border: str | None
    elevation: str | None
    mode: str = "disc"                 # disc | ring | net


_DOME_AMP = {"papule": 0.45, "nodule": 0.7, "tumor": 0.8, "vesicle": 0.6, "bulla": 0.55,
             "pustule": 0.6, "cyst": 0.65, "wheal": 0.25, "plaque": 0.3}
_ELEVATION_OF = {"macule": "flat", "patch": "flat", "papule": "dome-shaped", "plaque": "raised",
                 "nodule": "dome-shaped", "tumor": "exophytic", "vesicle": "dome-shaped",
                 "bulla": "dome-shaped", "pustule": "dome-shaped", "wheal": "raised",
                 "cyst": "dome-shaped", "erosion": "depressed", "ulcer": "depressed",
                 "atrophy": "depressed", "scar": "raised", "comedo": "flat", "burrow": "flat"}


def _height(elev: str, r: np.ndarray, R: float, morph: str | None, rng: np.random.Generator) -> np.ndarray:
    amp = _DOME_AMP.get(morph or "", 0.5) * R
    inside = np.clip(1 - r * r, 0, None)
    if elev == "flat":
        return np.zeros_like(r)
    if elev == "raised":
        return 0.3 * R * (1 - _smoothstep(0.7, 1.0, r)) * (1 + 0.15 * _smoothstep(0.5, 0.9, r))
    if elev == "dome-shaped":
        return amp * np.sqrt(inside)
    if elev == "pedunculated":
        return 1.1 * R * inside ** 0.25
    if elev == "exophytic":
        bumps = value_noise(rng, r.shape[0], r.shape[1], max(2.0, R / 2.5))
        return 0.9 * R * np.sqrt(inside) * (0.75 + 0.5 * bumps)
    if elev == "depressed":
        return -0.35 * R * inside
    raise ValueError(f"renderer has no elevation {elev!r}; expected one of {FEATURE_FIELDS['elevation']}")


def _draw_lesion(cv: _Canvas, les: _Lesion, sig: Signature, rng: np.random.Generator) -> None:
    R = max(les.radius, 0.8)
    soft = {"ill-defined": 0.7, None: 0.12}.get(les.border, 0.08)
    ext = 1.0 + soft + (0.35 if les.elevation == "pedunculated" else 0.1)
    reach = ext * R * (1.2 + 0.35 * (les.border == "irregular"))
    S = cv.size
    x0, x1 = max(0, int(les.cx - reach)), min(S, int(les.cx + reach) + 2)
    y0, y1 = max(0, int(les.cy - reach)), min(S, int(les.cy + reach) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    dx, dy = xx - les.cx, yy - les.cy
    ca, sa = np.cos(les.angle), np.sin(les.angle)
    u = (dx * ca + dy * sa) / R
    v = (-dx * sa + dy * ca) / (R * les.aspect)
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    # Outline: a wobble at the subgroup's lobe frequency; irregular borders add notches.
    wob = 0.06 * np.cos(sig.lobes * phi + rng.uniform(0, 6.3))
    if les.border == "irregular":
        # Asymmetric, notched outline: harmonics 2..9 with 1/k amplitudes and random phases.
        ks = np.arange(2, 10)
        amps = rng.uniform(0.5, 1.0, len(ks)) * 0.32 / ks
        for k, a in zip(ks, amps):
            wob = wob + a * np.cos(k * phi + rng.uniform(0, 6.3))
    r = rho / (1.0 + wob)
    soft = max(soft, 1.5 / R)
    alpha = 1 - _smoothstep(1 - soft / 2, 1 + soft / 2, r)
    if les.mode == "ring":
        alpha = alpha * (0.12 + 0.88 * _smoothstep(0.45, 0.72, r))
    elif les.mode == "net":
        period = max(3.0, R / 3)
        warp = period * 1.2 * value_noise(rng, *r.shape, cells=max(2.0, R / period))
        f = 2 * np.pi / period
        net = np.abs(np.sin(f * (xx + warp)) * np.sin(f * (yy - warp)))
        alpha = alpha * (0.25 + 0.6 * _smoothstep(0.55, 0.2, net))
    h, w = r.shape

    # Colour: one colour mottled; several either concentric or patchy, the first (the profile's
    # main colour) covering about half the lesion and the others sharing the rest.
    skin = cv.skin
    cols = np.stack([color_rgb(c, skin) for c in les.colors]) * np.asarray(sig.tint, np.float32)
    k = len(cols)
    if k == 1:
        col = np.broadcast_to(cols[0], (h, w, 3)).copy()
    else:
        cum = np.concatenate([[0.55], 0.55 + 0.45 * np.arange(1, k) / (k - 1)])[:-1]
        if rng.random() < 0.5:
            t = r + 0.3 * (value_noise(rng, h, w, cells=2.5) - 0.5)
            bounds = cum
        else:
            t = value_noise(rng, h, w, cells=2.5)
            inside = t[r < 1]
            bounds = np.quantile(inside, cum) if inside.size else cum
        col = cols[np.searchsorted(bounds, t)]
    col *= (0.93 + 0.14 * value_noise(rng, h, w, cells=max(2.0, R / 4)))[..., None]

    morph = les.morphology
    elev = les.elevation or _ELEVATION_OF.get(morph or "", "flat")
    height = _height(elev, r, R, morph, rng)
    spec = np.zeros((h, w), np.float32)
    centre = 1 - _smoothstep(0.0, 0.5, r)

    # Morphology-specific looks.
    if morph in ("vesicle", "bulla"):
        col = _mix(col, (1.0, 0.96, 0.88), 0.35)
        spec += 1.0 * centre
    elif morph == "pustule":
        col = col * (1 - centre[..., None]) + np.asarray((0.97, 0.92, 0.6), np.float32) * centre[..., None]
        spec += 0.5 * centre
    elif morph == "wheal":
        col = _mix(col, skin * 1.05, 0.35 * centre[..., None])
    elif morph == "cyst":
        dot = 1 - _smoothstep(0.0, 0.12, r)
        col = _mix(col, skin * 0.3, 0.8 * dot[..., None])
        spec += 0.3 * centre
    elif morph in ("ulcer", "erosion"):
        _crater(col, height, spec, r, R, rng, deep=morph == "ulcer")
    elif morph in ("atrophy", "scar"):
        col = _mix(col, (0.97, 0.92, 0.9), 0.25)
        spec += 0.5 * alpha
    elif morph == "comedo":
        alpha = alpha * 0.25
        _dots(cv, les, rng, (0.12, 0.09, 0.08), n=int(rng.integers(4, 9)), rad=0.18)
    elif morph == "burrow":
        alpha = alpha * 0.0
        pts = _polyline(rng, les.cx, les.cy, 2.5 * R, 10, 0.5)
        cv.line_layer((0.45, 0.42, 0.4)).line(pts, fill=255, width=max(1, int(0.35 * R)))
        _dots(cv, les, rng, (0.2, 0.15, 0.12), n=1, rad=0.25, at=(pts[-1][0] / 2, pts[-1][1] / 2))
    elif morph in ("nodule", "tumor", "papule"):
        spec += 0.2 * centre
    if les.border == "rolled":
        rim = np.exp(-(((r - 0.85) / 0.12) ** 2))
        height += 0.2 * R * rim
        col = _mix(col, (1.0, 0.94, 0.92), 0.3 * rim[..., None])
        spec += 0.5 * rim
    if les.elevation == "pedunculated":
        shadow = _smoothstep(1.0, 1.15, r) * (1 - _smoothstep(1.15, 1.5, r))
        cv.rgb[y0:y1, x0:x1] *= (1 - 0.35 * shadow)[..., None]

    for word in les.surface:
        col = _surface(word, cv, les, col, height, spec, r, alpha, R, rng, (x0, y0))
    for extra in les.overlays:
        _overlay(extra, cv, les, col, height, spec, r, R, rng)

    a = alpha[..., None]
    cv.rgb[y0:y1, x0:x1] = cv.rgb[y0:y1, x0:x1] * (1 - a) + col * a
    cv.height[y0:y1, x0:x1] += height * alpha
    cv.spec[y0:y1, x0:x1] = np.maximum(cv.spec[y0:y1, x0:x1], spec * alpha)


def _crater(col, height, spec, r, R, rng, deep: bool) -> None:
    inner = 1 - _smoothstep(0.35, 0.6, r)
    base = np.asarray((0.5, 0.08, 0.08) if deep else (0.85, 0.3, 0.28), np.float32)
    fibrin = (value_noise(rng, *r.shape, cells=max(2.0, R / 2.5)) > 0.6) & deep
    col[...] = col * (1 - inner[..., None]) + base * inner[..., None]
    col[fibrin & (inner > 0.5)] = (0.88, 0.78, 0.45)
    height -= (0.45 if deep else 0.15) * R * inner
    if deep:
        height += 0.2 * R * np.exp(-(((r - 0.7) / 0.12) ** 2))
    spec += 0.4 * inner


def _dots(cv: _Canvas, les: _Lesion, rng, color, n: int, rad: float, at=None) -> None:
    draw = cv.line_layer(color)
    for _ in range(n):
        if at is None:
            a, d = rng.uniform(0, 2 * np.pi), les.radius * np.sqrt(rng.random()) * 0.8
            x, y = les.cx + d * np.cos(a), les.cy + d * np.sin(a)
        else:
            x, y = at
        q = max(0.6, rad * les.radius) * 2
        draw.ellipse((2 * x - q, 2 * y - q, 2 * x + q, 2 * y + q), fill=255)


def _surface(word, cv, les, col, height, spec, r, alpha, R, rng, origin) -> np.ndarray:
    h, w = r.shape
    x0, y0 = origin
    inside = r < 0.95
    if word == "smooth":
        spec += 0.15
    elif word == "scale":
        fine = value_noise(rng, h, w, cells=max(3.0, w / 2.2))
        flecks = _smoothstep(0.55, 0.75, fine) * inside
        col = _mix(col, (0.94, 0.94, 0.92), 0.85 * flecks[..., None])
        height += 0.06 * R * flecks
    elif word == "crust":
        blobs = _smoothstep(0.55, 0.7, value_noise(rng, h, w, cells=max(2.0, R / 2))) * inside
        col = _mix(col, (0.62, 0.42, 0.15), 0.9 * blobs[..., None])
        height += 0.12 * R * blobs
    elif word == "ulceration":
        _crater(col, height, spec, r, R, rng, deep=True)
    elif word == "verrucous":
        height += 0.35 * R * value_noise(rng, h, w, cells=max(3.0, R / 1.5)) * inside
        col *= 0.9
    elif word == "keratotic":
        rough = value_noise(rng, h, w, cells=max(3.0, R / 1.5))
        col = _mix(col, (0.82, 0.76, 0.6), (0.25 + 0.3 * rough)[..., None] * inside[..., None])
        height += 0.15 * R * rough * inside
    elif word == "pearly":
        rim = _smoothstep(0.5, 0.9, r) * inside
        col = _mix(col, (0.99, 0.95, 0.93), 0.35 * rim[..., None])
        spec += 0.7 * rim
    elif word == "telangiectasia":
        draw = cv.line_layer((0.78, 0.08, 0.15))
        for _ in range(int(rng.integers(2, 5))):
            a, d = rng.uniform(0, 2 * np.pi), 0.6 * les.radius * rng.random()
            pts = _polyline(rng, les.cx + d * np.cos(a), les.cy + d * np.sin(a), 1.1 * les.radius, 6, 0.6)
            draw.line(pts, fill=200, width=1 if cv.size < 128 else 2)
    elif word == "umbilication":
        dimple = np.exp(-((r / 0.18) ** 2))
        height -= 0.3 * R * dimple
        col = _mix(col, col * 0.55, dimple[..., None])
    elif word == "lichenification":
        a = rng.uniform(0, np.pi)
        f = 2 * np.pi / max(2.5, R / 4)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        hatch = np.maximum(np.abs(np.sin(f * (xx * np.cos(a) + yy * np.sin(a)))),
                           np.abs(np.sin(f * (xx * np.cos(a + 1.2) + yy * np.sin(a + 1.2)))))
        col = col * (1 - 0.3 * _smoothstep(0.8, 1.0, hatch) * inside)[..., None]
        height += 0.1 * R * inside
    elif word == "excoriation":
        draw = cv.line_layer((0.55, 0.1, 0.08))
        for _ in range(int(rng.integers(2, 4))):
            a, d = rng.uniform(0, 2 * np.pi), 0.5 * les.radius * rng.random()
            pts = _polyline(rng, les.cx + d * np.cos(a), les.cy + d * np.sin(a), 0.9 * les.radius, 2, 0.1)
            draw.line(pts, fill=230, width=max(1, int(0.12 * les.radius)))
    elif word == "exudate":
        wet = _smoothstep(0.5, 0.65, value_noise(rng, h, w, cells=max(2.0, R / 2))) * inside
        col = _mix(col, (0.92, 0.8, 0.42), 0.7 * wet[..., None])
        spec += 0.9 * wet
    elif word == "fissure":
        draw = cv.line_layer((0.15, 0.06, 0.05))
        for _ in range(int(rng.integers(1, 3))):
            pts = _polyline(rng, les.cx, les.cy, 0.9 * les.radius, 5, 0.9)
            draw.line(pts, fill=230, width=1 if cv.size < 128 else 2)
    elif word == "friable":
        _dots(cv, les, rng, (0.45, 0.02, 0.05), n=int(rng.integers(2, 5)), rad=0.12)
        spec += 0.4 * inside
    elif word == "shiny":
        spec += 0.9 * inside
    elif word == "atrophic":
        col = _mix(col, (0.97, 0.93, 0.9), 0.25 * inside[..., None])
        height -= 0.1 * R * inside
        spec += 0.4 * inside
    elif word == "xerosis":
        cracks = np.abs(value_noise(rng, h, w, cells=max(3.0, R / 2)) - 0.5) < 0.04
        col = _mix(col, (0.95, 0.93, 0.9), 0.6 * (cracks & inside)[..., None])
    else:
        raise ValueError(f"renderer has no surface {word!r}; expected one of {FEATURE_FIELDS['surface']}")
    return col


def _overlay(word, cv, les, col, height, spec, r, R, rng) -> None:
    """A second morphology on a solitary lesion: small domes, a central crater, dots or a streak."""
    h, w = r.shape
    if word in ("ulcer", "erosion"):
        _crater(col, height, spec, r, R, rng, deep=word == "ulcer")
        return
    if word in ("comedo", "burrow", "scar", "atrophy"):
        if word == "comedo":
            _dots(cv, les, rng, (0.12, 0.09, 0.08), n=int(rng.integers(3, 7)), rad=0.08)
        elif word == "burrow":
            pts = _polyline(rng, les.cx, les.cy, 0.9 * les.radius, 6, 0.5)
            cv.line_layer((0.45, 0.42, 0.4)).line(pts, fill=255, width=1)
        else:
            centre = 1 - _smoothstep(0.2, 0.6, r)
            col[...] = _mix(col, (0.97, 0.92, 0.9), 0.4 * centre[..., None])
            spec += 0.5 * centre
        return
    # Dome-like morphologies sit on the lesion as a few small domes.
    tint = {"vesicle": (1.0, 0.96, 0.9), "bulla": (1.0, 0.95, 0.85), "pustule": (0.97, 0.92, 0.6),
            "cyst": (0.95, 0.88, 0.7)}.get(word)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n = 1 if word in ("nodule", "tumor", "bulla", "cyst", "plaque", "wheal", "patch", "macule") else int(rng.integers(3, 7))
    size = 0.45 if n == 1 else 0.18
    cy0, cx0 = np.unravel_index(np.argmin(r), r.shape)
    for _ in range(n):
        a, d = rng.uniform(0, 2 * np.pi), R * 0.6 * np.sqrt(rng.random()) * (n > 1)
        rr = np.sqrt((xx - cx0 - d * np.cos(a)) ** 2 + (yy - cy0 - d * np.sin(a)) ** 2) / max(size * R, 0.8)
        dome = np.sqrt(np.clip(1 - rr * rr, 0, None))
        height += _DOME_AMP.get(word, 0.4) * size * R * dome
        if tint is not None:
            col[...] = _mix(col, tint, 0.6 * (dome > 0)[..., None])
            spec += 0.8 * dome


# ---- placement -------------------------------------------------------------------------------
_SIZE_FRAC = {"small": (0.09, 0.13), "medium": (0.14, 0.2), "large": (0.22, 0.3)}
# How big lesions are relative to _SIZE_FRAC, and how many, per configuration.
_CONFIG = {"solitary": (1.0, 1, 1), "multiple": (0.7, 3, 6), "grouped": (0.45, 5, 10),
           "annular": (1.4, 1, 2), "linear": (0.5, 4, 8), "reticular": (2.2, 1, 1),
           "dermatomal": (0.45, 8, 14), "widespread": (0.42, 12, 22), "follicular": (0.32, 12, 22),
           "symmetric": (0.65, 1, 3)}
_MORPH_SCALE = {"vesicle": 0.6, "pustule": 0.6, "comedo": 0.6, "papule": 0.8, "macule": 0.9,
                "patch": 1.5, "plaque": 1.2, "tumor": 1.4, "bulla": 1.1}
# Morphologies that can only be a lesion's base, never an overlay on another lesion.
_BASE_ONLY = ("macule", "patch", "plaque", "tumor")


def _centres(config: str, n: int, S: int, rng: np.random.Generator) -> np.ndarray:
    if config in ("solitary", "annular", "reticular"):
        return S * (0.5 + rng.uniform(-0.15, 0.15, (n, 2)))
    if config == "grouped":
        c = S * (0.5 + rng.uniform(-0.15, 0.15, 2))
        return c + rng.normal(0, 0.09 * S, (n, 2))
    if config == "linear":
        a = rng.uniform(0, np.pi)
        t = np.linspace(-0.35, 0.35, n) * S
        return S * 0.5 + np.stack([t * np.cos(a), t * np.sin(a)], 1) + rng.normal(0, 0.015 * S, (n, 2))
    if config == "dermatomal":
        a = rng.uniform(0, np.pi)
        t = rng.uniform(-0.45, 0.45, n) * S
        bend = 0.12 * S * np.sin(np.pi * t / S + rng.uniform(0, 6.3))
        return S * 0.5 + np.stack([t * np.cos(a) - bend * np.sin(a), t * np.sin(a) + bend * np.cos(a)], 1) \
            + rng.normal(0, 0.04 * S, (n, 2))
    if config == "follicular":
        k = int(np.ceil(np.sqrt(n)))
        g = (np.stack(np.meshgrid(np.arange(k), np.arange(k)), -1).reshape(-1, 2)[:n] + 0.5) / k
        return S * (0.08 + 0.84 * g) + rng.normal(0, 0.03 * S, (n, 2))
    if config == "symmetric":
        half = S * np.stack([rng.uniform(0.12, 0.4, n), rng.uniform(0.15, 0.85, n)], 1)
        mirror = half.copy()
        mirror[:, 0] = S - half[:, 0]
        return np.concatenate([half, mirror])
    return S * rng.uniform(0.1, 0.9, (n, 2))           # multiple, widespread


def _choose(options: Sequence[str], anchors: Sequence[str], rng: np.random.Generator,
            max_k: int | None = None) -> list[str]:
    """A random non-empty subset of `options` that contains every anchor (order: anchors first)."""
    rest = [o for o in options if o not in anchors]
    k_max = len(options) if max_k is None else max(max_k, len(anchors))
    k = int(rng.integers(max(1, len(anchors)), min(len(options), k_max) + 1))
    picked = list(anchors) + [rest[i] for i in rng.permutation(len(rest))[: k - len(anchors)]]
    return picked


def _features(profile, sig: Signature, rng: np.random.Generator) -> dict[str, list[str]]:
    """The words of each field this image shows (empty profile fields stay empty)."""
    anchors: dict[str, list[str]] = {}
    for f, wd in sig.anchors:
        anchors.setdefault(f, []).append(wd)
    out: dict[str, list[str]] = {}
    for f in RENDERED_FIELDS:
        options = tuple(getattr(profile, f))
        for wd in options:
            if wd not in FEATURE_FIELDS[f]:
                raise ValueError(f"profile {getattr(profile, 'name', '?')!r}: {f} word {wd!r} is not in "
                                 f"knowledge.vocab.{f.upper()}")
        anc = [a for a in anchors.get(f, []) if a in options]
        if not options:
            out[f] = []
        elif f == "configuration":
            out[f] = [anc[0]] if anc else [options[int(rng.integers(len(options)))]]
        else:
            out[f] = _choose(options, anc, rng)
            if f == "colors":       # profile order: the first listed colour is the main one
                out[f] = sorted(out[f], key=options.index)
    return out


def _lesions(feat: dict[str, list[str]], sig: Signature, S: int, rng: np.random.Generator) -> list[_Lesion]:
    config = (feat["configuration"] or ["solitary"])[0]
    scale, lo, hi = _CONFIG[config]
    morphs = feat["morphology"] or ["papule"]
    overlays: tuple[str, ...] = ()
    if config in ("solitary", "reticular"):
        # One lesion: the first base-capable morphology is its body, the others overlays.
        base = next((m for m in morphs if m in _BASE_ONLY), morphs[0])
        rest = [m for m in morphs if m != base]
        overlays = tuple(m for m in rest if m not in _BASE_ONLY)
        morphs = [base]
        for f in ("size", "elevation", "border"):       # one lesion shows one value of each
            feat[f] = feat[f][:1]
        feat["morphology"] = [base, *overlays] if feat["morphology"] else []
        n = 1
    else:
        n = int(rng.integers(lo, hi + 1))
        n = max(n, *(len(feat[f]) for f in _PER_LESION))
    # Symmetric: n distinct lesions on one side, mirrored onto the other.
    centres = _centres(config, n, S, rng)
    colors = tuple(feat["colors"] or ["pink"])
    out = []
    for i in range(len(centres)):
        j = i % n
        morph = morphs[j % len(morphs)]
        size = feat["size"][j % len(feat["size"])] if feat["size"] else "medium"
        lo_f, hi_f = _SIZE_FRAC[size]
        rad = max(S * rng.uniform(lo_f, hi_f) * scale * _MORPH_SCALE.get(morph, 1.0), S / 28)
        aspect = 0.22 if morph == "scar" else rng.uniform(*sig.aspect)
        out.append(_Lesion(
            cx=float(centres[i, 0]), cy=float(centres[i, 1]), radius=float(rad),
            angle=float(rng.uniform(0, np.pi)), aspect=float(aspect), morphology=morph,
            overlays=overlays, colors=colors, surface=tuple(feat["surface"]),
            border=feat["border"][j % len(feat["border"])] if feat["border"] else None,
            elevation=feat["elevation"][j % len(feat["elevation"])] if feat["elevation"] else None,
            mode={"annular": "ring", "reticular": "net"}.get(config, "disc")))
    return out


# ---- background and camera -------------------------------------------------------------------
def _background(skin_type: int, S: int, rng: np.random.Generator) -> _Canvas:
    skin = SKIN_TONES[skin_type - 1] * (1 + rng.uniform(-0.05, 0.05, 3)).astype(np.float32)
    light = 0.88 + 0.24 * value_noise(rng, S, S, cells=1.5)
    grain = 0.96 + 0.08 * value_noise(rng, S, S, cells=S / 3)
    rgb = skin * (light * grain)[..., None]
    # Faint redness blotches: real skin is not one flat tone.
    blotch = value_noise(rng, S, S, cells=3) * 0.08
    rgb = rgb * (1 - blotch[..., None]) + (skin * (1.0, 0.8, 0.8)) * blotch[..., None]
    cv = _Canvas(S, skin, rgb.astype(np.float32), np.zeros((S, S), np.float32), np.zeros((S, S), np.float32))
    if rng.random() < 0.5:                                  # pores
        n = int(S * S / 60)
        ys, xs = rng.integers(0, S, n), rng.integers(0, S, n)
        cv.rgb[ys, xs] *= 0.9
    if rng.random() < 0.3:                                  # hair
        draw = cv.line_layer(tuple(float(x) for x in skin * 0.35))
        for _ in range(int(rng.integers(1, 6))):
            pts = _polyline(rng, rng.uniform(0, S), rng.uniform(0, S), rng.uniform(0.15, 0.35) * S, 8, 0.12)
            draw.line(pts, fill=int(rng.integers(80, 170)), width=1 if S < 128 else 2)
    return cv


def _finish(cv: _Canvas, rng: np.random.Generator, acq: Acquisition) -> np.ndarray:
    S = cv.size
    for color, (img, _) in cv.lines.items():
        a = np.asarray(img.resize((S, S), Image.BOX), np.float32)[..., None] / 255.0
        cv.rgb = cv.rgb * (1 - a) + np.asarray(color, np.float32) * a
    # One light for the whole photo: shade the height map and add highlights.
    th = rng.uniform(0, 2 * np.pi)
    lx, ly, lz = 0.6 * np.cos(th), 0.6 * np.sin(th), 0.8
    gy, gx = np.gradient(cv.height)
    norm = np.sqrt(gx * gx + gy * gy + 1)
    ndotl = (-gx * lx - gy * ly + lz) / norm
    shade = np.clip(ndotl / lz, 0.5, 1.4)
    hx, hy, hz = lx, ly, lz + 1.0                           # Blinn half vector towards the camera
    hn = np.sqrt(hx * hx + hy * hy + hz * hz)
    spec = np.clip((-gx * hx - gy * hy + hz) / (norm * hn), 0, 1) ** 30 * cv.spec
    rgb = cv.rgb * shade[..., None] + 0.8 * spec[..., None]
    rgb = rgb * acq.exposure * np.asarray(acq.cast, np.float32)
    img = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
    scale = S / 64
    if acq.blur > 0:
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(acq.blur * scale)))
    if acq.noise > 0:
        img = np.clip(img + rng.normal(0, acq.noise, img.shape), 0, 255).astype(np.uint8)
    if acq.jpeg_quality > 0:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(acq.jpeg_quality))
        img = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return np.ascontiguousarray(img, dtype=np.uint8)


# ---- public ----------------------------------------------------------------------------------
def feature_concepts(features: dict[str, Sequence[str]]) -> list[str]:
    """Concept names (knowledge.CONCEPTS order) of the (field -> words) features shown."""
    from skinr1_jax.knowledge import CONCEPTS, concept_of_feature
    found = {concept_of_feature(f, w) for f, words in features.items() for w in words}
    return [c for c in CONCEPTS if c in found]


def render_features(profile, skin_type: int, rng: np.random.Generator, size: int,
                    acquisition: Acquisition | None = None,
                    signature: Signature | None = None) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Like `render_image`, returning the drawn (field -> words) instead of concept names."""
    if not 1 <= int(skin_type) <= 6:
        raise ValueError(f"skin_type={skin_type!r}: expected a Fitzpatrick type 1..6")
    if not 16 <= int(size) <= 1024:
        raise ValueError(f"size={size!r}: expected 16..1024 pixels")
    sig = signature or Signature()
    feat = _features(profile, sig, rng)
    cv = _background(int(skin_type), int(size), rng)
    for les in _lesions(feat, sig, int(size), rng):
        _draw_lesion(cv, les, sig, rng)
    img = _finish(cv, rng, acquisition or Acquisition())
    return img, {f: list(v) for f, v in feat.items() if v}


def render_image(profile, skin_type: int, rng: np.random.Generator, size: int,
                 acquisition: Acquisition | None = None,
                 signature: Signature | None = None) -> tuple[np.ndarray, list[str]]:
    """Renders one clinical-photo-like image of `profile` on Fitzpatrick `skin_type` skin.

    profile: any object with the knowledge.Profile feature fields (tuples of vocab words).
    Returns (uint8[size, size, 3], concepts): the knowledge.CONCEPTS names of the features drawn.
    acquisition=None renders a clean image (no blur, noise, cast or JPEG).
    """
    img, feat = render_features(profile, skin_type, rng, size, acquisition, signature)
    return img, feature_concepts(feat)
