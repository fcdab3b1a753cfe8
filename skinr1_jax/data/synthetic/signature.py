"""Per-disease visual signatures: what keeps siblings separable and the tree visible.

The KB's textbook profiles decide what a disease looks like, but nothing in them guarantees that
two diseases of one subgroup can be told apart in an image: profiles overlap, and an image shows
only a random subset of a profile's words. Two deterministic mechanisms fix that:

1. Anchors (separability). For every pair of sibling diseases among the rendered classes, one
   of them gets an *anchor*: a visible word of its own profile that the other's profile lacks,
   which every image of it shows. Images of the other never show that word, so each pair is
   separable by at least one drawn feature. Words are tried in salience order (colour,
   configuration, morphology, surface, border, elevation, size) and reused across pairs; a
   lesion shows one configuration, and one size/elevation/border when it is solitary, so at most
   one anchor per such field. Siblings with identical visible profiles first split the options
   of their most salient multi-word field between them (still only words of their own profiles).
2. Family style (confusability follows the tree). Each subgroup fixes a lesion colour tint,
   an outline aspect range and a lobe frequency; the tint is the product of a group factor and a
   subgroup factor. These are not concepts, just the family resemblance that makes siblings
   closer than cousins and cousins closer than distant nodes, whatever their profiles say.

Everything derives from node names (CRC32 seeds) and the KB, so it is stable across runs and
independent of node ids. Anchors depend on which diseases are rendered together (a disease's
siblings in the chosen subset), so the default and full subsets draw a disease slightly differently.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from skinr1_jax.data.synthetic.render import RENDERED_FIELDS, Signature

# Most to least visible at 64 px.
SALIENCE = ("colors", "configuration", "morphology", "surface", "border", "elevation", "size")
# Fields a single lesion (or image, for configuration) can show only one word of.
_SINGLE = ("configuration", "size", "elevation", "border")
_BASE_ONLY_MORPH = ("macule", "patch", "plaque", "tumor")


class SignatureError(ValueError):
    """Two rendered diseases cannot be made visually separable from their profiles."""


@dataclass(frozen=True)
class RenderSpec:
    """What the renderer draws for one disease: its (possibly restricted) profile and signature."""
    node: int
    name: str
    profile: object          # a knowledge.Profile (feature fields restricted for identical twins)
    signature: Signature


def _seed(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def family_style(group: str, subgroup: str) -> dict:
    """Tint, aspect range and lobes shared by a subgroup (tint partly shared by its group)."""
    g, s = _seed("group:" + group), _seed("subgroup:" + subgroup)
    tint = (1 + g.uniform(-0.05, 0.05, 3)) * (1 + s.uniform(-0.1, 0.1, 3))
    lo = float(s.uniform(0.55, 0.8))
    return dict(tint=tuple(float(x) for x in tint), aspect=(lo, min(1.0, lo + 0.25)),
                lobes=int(s.integers(2, 7)))


def _visible(profile) -> set[tuple[str, str]]:
    return {(f, w) for f in RENDERED_FIELDS for w in getattr(profile, f)}


def _split_twins(names: Sequence[str], profiles: dict[str, object]) -> dict[str, object]:
    """Siblings with identical visible features share out one multi-word field between them."""
    groups: dict[frozenset, list[str]] = {}
    for n in names:
        groups.setdefault(frozenset(_visible(profiles[n])), []).append(n)
    out = dict(profiles)
    for members in groups.values():
        if len(members) < 2:
            continue
        members = sorted(members)
        p0 = profiles[members[0]]
        field = next((f for f in SALIENCE if len(getattr(p0, f)) >= len(members)), None)
        if field is None:
            raise SignatureError(f"diseases {members} have identical visible profiles with no field of "
                                 f"{len(members)}+ words to share out; give one a distinguishing feature in the KB")
        words = getattr(p0, field)
        for k, n in enumerate(members):
            out[n] = dataclasses.replace(profiles[n], **{field: tuple(words[k::len(members)])})
    return out


def _anchors(names: Sequence[str], profiles: dict[str, object]) -> dict[str, list[tuple[str, str]]]:
    feats = {n: _visible(profiles[n]) for n in names}
    anchors: dict[str, list[tuple[str, str]]] = {n: [] for n in names}

    def allowed(n: str, fw: tuple[str, str]) -> bool:
        f, w = fw
        have = anchors[n]
        if f in _SINGLE and any(g == f for g, _ in have):
            return False
        return not (f == "morphology" and w in _BASE_ONLY_MORPH
                    and any(g == f and x in _BASE_ONLY_MORPH for g, x in have))

    def best(n: str, other: str) -> tuple[int, str, tuple[str, str]] | None:
        own = feats[n] - feats[other]
        for rank, f in enumerate(SALIENCE):
            for w in getattr(profiles[n], f):
                if (f, w) in own and allowed(n, (f, w)):
                    return rank, n, (f, w)
        return None

    for i, a in enumerate(names):
        for b in names[i + 1:]:
            covered = any(x not in feats[b] for x in anchors[a]) or any(x not in feats[a] for x in anchors[b])
            if covered:
                continue
            # The more salient of the two directions wins (ties: the alphabetically first disease).
            options = [c for c in (best(a, b), best(b, a)) if c is not None]
            if not options:
                raise SignatureError(f"siblings {a!r} and {b!r} share every visible feature the renderer can "
                                     f"anchor; give one of them a distinguishing feature in the KB")
            _, n, fw = min(options)
            anchors[n].append(fw)
    return anchors


def render_specs(taxonomy, kb, leaf_ids: Sequence[int]) -> dict[int, RenderSpec]:
    """RenderSpec per leaf id of `taxonomy`; profiles come from `kb` by node name."""
    kb_tax = getattr(kb, "taxonomy", taxonomy)
    profiles: dict[str, object] = {}
    for i in leaf_ids:
        name = taxonomy.name(i)
        try:
            profiles[name] = kb.profile(kb_tax.id(name))
        except KeyError as e:
            raise KeyError(f"synthetic_derm: no knowledge-base profile for disease {name!r} ({e})") from None
    by_parent: dict[int, list[str]] = {}
    for i in leaf_ids:
        by_parent.setdefault(taxonomy.parent(i), []).append(taxonomy.name(i))
    anchors: dict[str, list[tuple[str, str]]] = {}
    for sibs in by_parent.values():
        sibs = sorted(sibs)
        profiles.update(_split_twins(sibs, profiles))
        anchors.update(_anchors(sibs, profiles))
    out = {}
    for i in leaf_ids:
        name = taxonomy.name(i)
        path = taxonomy.path(i)
        group = taxonomy.name(path[0]) if path else name
        subgroup = taxonomy.name(path[-2]) if len(path) >= 2 else group
        out[i] = RenderSpec(i, name, profiles[name],
                            Signature(anchors=tuple(anchors[name]), **family_style(group, subgroup)))
    return out
