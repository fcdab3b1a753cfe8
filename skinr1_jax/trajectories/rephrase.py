"""LLM phrasing of one DDx comparison (optional; `generate.llm.enabled`).

The model only writes the comparison sentence; everything around it stays templated. Its
text is accepted only when it is short, tag-free, names the favoured diagnosis and no disease
other than the two compared (or their ancestors); otherwise the caller keeps its template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from skinr1_jax.llm.client import ChatClient, LLMError
from skinr1_jax.taxonomy.resolve import normalize

if TYPE_CHECKING:
    from skinr1_jax.taxonomy import Taxonomy

MAX_WORDS = 60

SYSTEM = ("You are a dermatology teacher. Compare two textbook diagnostic rules using only "
          "visible clinical signs (no history, histology or tests). Answer with one or two "
          "plain sentences, at most 45 words, no tags, no lists, and name no disease other "
          "than the two given.")


def comparison_request(favoured: str, favoured_rule: str, other: str, other_rule: str,
                       observed: Sequence[str]) -> str:
    seen = ", ".join(observed) if observed else "not listed"
    return (f"Visible findings in the image: {seen}.\n"
            f"Rule for {favoured}: {favoured_rule}\n"
            f"Rule for {other}: {other_rule}\n"
            f"Explain why the findings fit {favoured} better than {other}: which features of the "
            f"{favoured} rule are present and which key features of the {other} rule are absent.")


@lru_cache(maxsize=4)
def _name_index(taxonomy: Taxonomy) -> tuple[re.Pattern, dict[str, int]]:
    # Only names of 5+ characters: short abbreviations ("df", "nv") occur inside ordinary words.
    owner: dict[str, int] = {}
    for n in taxonomy.nodes:
        for name in (n.name, *n.synonyms):
            key = normalize(name)
            if len(key) >= 5:
                owner[key] = n.id if owner.get(key, n.id) == n.id else -1
    keys = sorted(owner, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(map(re.escape, keys)) + r")\b"), owner


def mentioned_nodes(text: str, taxonomy: Taxonomy) -> set[int]:
    """Nodes whose name or synonym occurs in `text` (after normalisation); -1 for ambiguous ones."""
    pattern, owner = _name_index(taxonomy)
    return {owner[m.group(1)] for m in pattern.finditer(normalize(text))}


def clean(text: str) -> str:
    text = re.sub(r"</?[^<>]{1,60}>", " ", text)   # the paper's models wrap answers in a tag
    return " ".join(text.split()).strip()


def acceptable(text: str, favoured: int, other: int, taxonomy: Taxonomy) -> bool:
    if not text or "<" in text or ">" in text or len(text.split()) > MAX_WORDS:
        return False
    allowed = set(taxonomy.path(favoured)) | set(taxonomy.path(other)) | {taxonomy.root}
    found = mentioned_nodes(text, taxonomy)
    return favoured in found and found <= allowed


def llm_comparison(client: ChatClient, llm_cfg: Any, taxonomy: Taxonomy, favoured: int,
                   favoured_rule: str, other: int, other_rule: str,
                   observed: Sequence[str]) -> str | None:
    """The model's comparison sentence, or None when the call fails or the text is rejected."""
    request = comparison_request(taxonomy.name(favoured), favoured_rule, taxonomy.name(other),
                                 other_rule, observed)
    try:
        text = clean(client.ask(SYSTEM, request, temperature=float(llm_cfg.temperature),
                                max_tokens=int(llm_cfg.max_tokens)))
    except LLMError:
        return None
    if not acceptable(text, favoured, other, taxonomy):
        return None
    return text if text.endswith((".", "!", "?")) else text + "."
