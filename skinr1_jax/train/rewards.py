"""Rewards of the hierarchical GRPO stage.

Host side: decoded responses are parsed into fixed-size int arrays (`parse_responses`).
Device side: one vectorised jnp function (`compute_rewards`) turns those arrays and the
questions' targets into the reward of every completion in the batch, with each component
returned for logging.

The paper's MCQ reward (maximum 2.0): format (1.0 when the whole response is
`<thinking>...</thinking>` then `<final diagnosis>...</final diagnosis>`) + the chosen option's
hierarchical score (at most 0.75) + 0.25 for the right malignancy class. The open-ended form
replaces the option score by 0.75 x a taxonomy credit in [0, 1] read from a precomputed
[N, N] matrix (`credit_matrix`), so both forms share the same scale.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from skinr1_jax.knowledge.vocab import MALIGNANCY_CLASSES

NONE = -1           # no parsable option / malignancy word
UNKNOWN = -1        # the resolver's "no node" (skinr1_jax.taxonomy.UNKNOWN)
FULL_OPTION_SCORE = 0.75

# The words the paper's parser looks for, mapped onto MALIGNANCY_CLASSES.
_MALIGNANCY_WORDS = {
    "benign": "benign",
    "precancerous": "precancerous_in_situ",
    "malignant": "malignant",
    "non-neoplastic": "non_neoplastic",
}
# The pattern of each class's word; "non-malignant" is not "malignant".
_CLASS_PATTERNS = {
    "benign": "benign",
    "precancerous_in_situ": "precancerous",
    "malignant": "malignant",
    "non_neoplastic": "non[-_ ]neoplastic",
}


def _malignancy_re(classes: Sequence[str]) -> re.Pattern:
    """A pattern matching the words of `classes` only."""
    unknown = [c for c in classes if c not in _CLASS_PATTERNS]
    if unknown or not classes:
        raise ValueError(f"malignancy_classes {tuple(classes)}: expected a non-empty subset of "
                         f"{MALIGNANCY_CLASSES}")
    words = "|".join(_CLASS_PATTERNS[c] for c in classes)
    return re.compile(rf"(?<!non[-_ ])\b({words})\b", re.I)
# The paper's option parser: effectively the first letter of the final field.
_OPTION_RE = re.compile(r"[:\(\s]*([A-Z])[:\)\s]*", re.I)
_STRICT_OPTION_RE = re.compile(r"^\s*[\(\[]?([A-Z])(?![A-Za-z])")
_STANDALONE_LETTER_RE = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")


def malignancy_index(word: str) -> int:
    """Index in MALIGNANCY_CLASSES of a class name or of one of the parser's words."""
    key = word.strip().lower().replace("_", "-").replace(" ", "-")
    name = _MALIGNANCY_WORDS.get(key, word.strip().lower())
    if name not in MALIGNANCY_CLASSES:
        raise ValueError(f"unknown malignancy class {word!r}; expected one of "
                         f"{MALIGNANCY_CLASSES}")
    return MALIGNANCY_CLASSES.index(name)


@dataclasses.dataclass(frozen=True)
class ResponseParser:
    """Parses responses of the form <think_tag>...</think_tag><final_tag>...</final_tag>."""
    think_tag: str = "thinking"
    final_tag: str = "final diagnosis"
    num_options: int = 4
    strict: bool = False   # True: the final field must start with the letter, one letter only
    # The classes the prompt offers (tasks.TaskFormat.malignancy_classes): a word of a class it
    # does not offer ("non-neoplastic" under the paper's three) is not an answer.
    malignancy_classes: tuple[str, ...] = MALIGNANCY_CLASSES

    def __post_init__(self):
        object.__setattr__(self, "malignancy_classes", tuple(self.malignancy_classes))
        object.__setattr__(self, "_malignancy_re", _malignancy_re(self.malignancy_classes))
        t, f = re.escape(self.think_tag), re.escape(self.final_tag)
        object.__setattr__(self, "_format_re", re.compile(
            rf"^\s*<{t}>.*?</{t}>\s*<{f}>.*?</{f}>\s*$", re.I | re.S))
        object.__setattr__(self, "_final_re", re.compile(rf"<{f}>(.*?)</{f}>", re.I | re.S))

    def final_field(self, text: str) -> str | None:
        m = self._final_re.search(text)
        return None if m is None else m.group(1)

    def format_ok(self, text: str) -> int:
        return int(self._format_re.match(text) is not None)

    def option(self, final: str | None) -> int:
        if final is None:
            return NONE
        if self.strict:
            m = _STRICT_OPTION_RE.match(final)
            letters = {x for x in _STANDALONE_LETTER_RE.findall(final)
                       if ord(x) - ord("A") < self.num_options}
            if m is None or len(letters) > 1:
                return NONE
            letter = m.group(1)
        else:
            m = _OPTION_RE.search(final)
            if m is None:
                return NONE
            letter = m.group(1).upper()
        index = ord(letter) - ord("A")
        return index if 0 <= index < self.num_options else NONE

    def malignancy(self, final: str | None) -> int:
        if final is None:
            return NONE
        # The last class word, not the paper's first: an option may itself be a group named
        # "malignant ..." or "benign ..." ("C: malignant epidermal, precancerous in situ").
        words = self._malignancy_re.findall(final)
        return NONE if not words else malignancy_index(words[-1])

    def __call__(self, texts: Sequence[str],
                 resolver: Callable[[str], int] | None = None) -> dict[str, np.ndarray]:
        """Parse a batch: format_ok, option (-1 none), malignancy_pred (-1 none) and, with a
        resolver (e.g. `Taxonomy.resolve`), node_pred (UNKNOWN when unresolved); i32[B] each."""
        finals = [self.final_field(t) for t in texts]
        out = {
            "format_ok": np.array([self.format_ok(t) for t in texts], np.int32),
            "option": np.array([self.option(f) for f in finals], np.int32),
            "malignancy_pred": np.array([self.malignancy(f) for f in finals], np.int32),
        }
        if resolver is not None:
            out["node_pred"] = np.array(
                [UNKNOWN if f is None else int(resolver(f.strip())) for f in finals], np.int32)
        return out


def parse_responses(texts: Sequence[str], *, think_tag: str = "thinking",
                    final_tag: str = "final diagnosis", num_options: int = 4,
                    resolver: Callable[[str], int] | None = None, strict: bool = False,
                    malignancy_classes: Sequence[str] = MALIGNANCY_CLASSES
                    ) -> dict[str, np.ndarray]:
    return ResponseParser(think_tag, final_tag, num_options, strict,
                          tuple(malignancy_classes))(texts, resolver)


def credit_matrix(mode: str, *, distance: np.ndarray | None = None,
                  shared_depth: np.ndarray | None = None, decay: float = 0.5) -> np.ndarray:
    """f32[N, N] open-ended credit[true, pred] in [0, 1], 1 on the diagonal.

    distance: decay ** tree_distance(true, pred).
    shared_depth: depth(lca(true, pred)) / depth(true) (the diagonal of `shared_depth` holds
    each node's depth).
    """
    if mode == "distance":
        if distance is None:
            raise ValueError("credit_matrix(mode='distance') needs the distance matrix")
        d = np.asarray(distance)
        if d.ndim != 2 or d.shape[0] != d.shape[1]:
            raise ValueError(f"distance matrix must be square, got {d.shape}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"distance_decay={decay}: must be in [0, 1]")
        return np.power(np.float32(decay), d.astype(np.float32)).astype(np.float32)
    if mode == "shared_depth":
        if shared_depth is None:
            raise ValueError("credit_matrix(mode='shared_depth') needs the shared-depth matrix")
        s = np.asarray(shared_depth).astype(np.float32)
        if s.ndim != 2 or s.shape[0] != s.shape[1]:
            raise ValueError(f"shared-depth matrix must be square, got {s.shape}")
        depth = np.diag(s)[:, None]
        return np.where(depth > 0, s / np.maximum(depth, 1.0), 0.0).astype(np.float32)
    raise ValueError(f"rl.reward.distance_mode={mode!r}: expected 'distance' or 'shared_depth'")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """Static reward settings (hashable, closed over by the jitted step)."""
    variant: str = "hierarchical"      # hierarchical | flat
    format_weight: float = 1.0
    option_weight: float = 1.0
    malignancy_weight: float = 0.25
    # Lookup reward (not the paper's): check_weight x the option check's score
    # (eval.option_check.check_scores), for 4-option questions answered through a written check.
    check_weight: float = 0.0

    def __post_init__(self):
        if self.check_weight < 0:
            raise ValueError(f"rl.reward.check_weight={self.check_weight}: must be >= 0")
        if self.variant not in ("hierarchical", "flat"):
            raise ValueError(f"rl.reward.variant={self.variant!r}: expected 'hierarchical' "
                             "or 'flat'")

    @classmethod
    def from_config(cls, reward_cfg: Mapping[str, Any]) -> "RewardSpec":
        return cls(variant=reward_cfg["variant"],
                   format_weight=float(reward_cfg["format_weight"]),
                   option_weight=float(reward_cfg["option_weight"]),
                   malignancy_weight=float(reward_cfg["malignancy_weight"]),
                   check_weight=float(reward_cfg["check_weight"]))


REWARD_KEYS = ("format_ok", "option", "option_scores", "malignancy_pred", "malignancy_true")
OPEN_KEYS = ("node_pred", "node_true", "is_open")
CHECK_KEYS = ("check_score",)


def compute_rewards(batch: Mapping[str, jax.Array], spec: RewardSpec,
                    credit: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Rewards f32[B] and their weighted components (which sum to the reward).

    batch: format_ok i32[B], option i32[B] (-1 none), option_scores f32[B, K],
    malignancy_pred i32[B], malignancy_true i32[B] (-1 unknown: no credit); with `credit`
    ([N, N]) also node_pred i32[B] (UNKNOWN -1), node_true i32[B] and is_open i32[B] (1 =
    open-ended question: its answer term is the taxonomy credit instead of the option score);
    with spec.check_weight > 0 also check_score f32[B] (a "check" component).
    """
    missing = [k for k in REWARD_KEYS if k not in batch]
    if missing:
        raise KeyError(f"rollout batch lacks reward inputs {missing}")
    scores = batch["option_scores"].astype(jnp.float32)
    option = batch["option"]
    k = scores.shape[-1]
    valid = (option >= 0) & (option < k)
    picked = jnp.take_along_axis(scores, jnp.clip(option, 0, k - 1)[:, None], axis=-1)[:, 0]
    picked = jnp.where(valid, picked, 0.0)
    if spec.variant == "flat":
        picked = jnp.where(picked >= FULL_OPTION_SCORE - 1e-6, picked, 0.0)
    answer = picked
    if credit is not None:
        missing = [k for k in OPEN_KEYS if k not in batch]
        if missing:
            raise KeyError(f"rollout batch lacks open-ended reward inputs {missing}")
        n = credit.shape[0]
        pred, true = batch["node_pred"], batch["node_true"]
        known = (pred >= 0) & (pred < n) & (true >= 0) & (true < n)
        node_credit = credit[jnp.clip(true, 0, n - 1), jnp.clip(pred, 0, n - 1)]
        node_credit = jnp.where(known, node_credit, 0.0)
        if spec.variant == "flat":
            node_credit = jnp.where(node_credit >= 1.0 - 1e-6, 1.0, 0.0)
        answer = jnp.where(batch["is_open"] > 0, FULL_OPTION_SCORE * node_credit, picked)
    mal_ok = (batch["malignancy_pred"] == batch["malignancy_true"]) & (batch["malignancy_true"] >= 0)
    components = {
        "format": spec.format_weight * batch["format_ok"].astype(jnp.float32),
        "answer": spec.option_weight * answer,
        "malignancy": spec.malignancy_weight * mal_ok.astype(jnp.float32),
    }
    if spec.check_weight:
        if "check_score" not in batch:
            raise KeyError("rl.reward.check_weight > 0 but the rollout batch lacks check_score")
        components["check"] = spec.check_weight * batch["check_score"].astype(jnp.float32)
    total = sum(components.values())
    return total, components
