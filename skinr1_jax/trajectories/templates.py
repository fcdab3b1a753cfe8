"""Phrase banks and sentence builders for the reasoning trajectories.

Every step has several wordings and lists are drawn in varied order, so a model cannot learn
one sentence by heart. The hierarchy sentence is the one fixed form: the verifier parses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MALIGNANCY_WORDS = {
    "benign": "benign",
    "malignant": "malignant",
    "precancerous_in_situ": "precancerous (in situ)",
    "non_neoplastic": "non-neoplastic",
}

# How each clinical concept reads in a description: ("lesion", noun) is a primary lesion,
# ("adj", word) goes before the noun, ("with", phrase) follows "with". `FINDING` is the noun
# phrase used when findings are listed as evidence.
CONCEPT_STYLE: dict[str, tuple[str, str]] = {
    "vesicle": ("lesion", "vesicle"), "papule": ("lesion", "papule"), "macule": ("lesion", "macule"),
    "plaque": ("lesion", "plaque"), "abscess": ("lesion", "abscess"), "pustule": ("lesion", "pustule"),
    "bulla": ("lesion", "bulla"), "patch": ("lesion", "patch"), "nodule": ("lesion", "nodule"),
    "wheal": ("lesion", "wheal"), "cyst": ("lesion", "cyst"), "comedo": ("lesion", "comedo"),
    "burrow": ("lesion", "burrow"), "ulcer": ("with", "ulceration"), "erosion": ("with", "erosions"),
    "crust": ("with", "crust"), "excoriation": ("with", "excoriations"), "atrophy": ("with", "atrophy"),
    "exudate": ("with", "exudate"), "purpura": ("with", "purpura"), "fissure": ("with", "fissures"),
    "induration": ("with", "induration"), "xerosis": ("with", "dry skin"),
    "telangiectasia": ("with", "telangiectasia"), "scale": ("adj", "scaly"), "scar": ("with", "scarring"),
    "friable": ("adj", "friable"), "sclerosis": ("with", "sclerosis"), "pedunculated": ("adj", "pedunculated"),
    "exophytic": ("adj", "exophytic"), "warty": ("adj", "warty"), "dome-shaped": ("adj", "dome-shaped"),
    "flat-topped": ("adj", "flat-topped"), "hyperpigmentation": ("adj", "brown"),
    "translucent": ("adj", "translucent"), "hypopigmentation": ("adj", "pale"), "purple": ("adj", "purple"),
    "yellow": ("adj", "yellow"), "black": ("adj", "black"), "erythema": ("adj", "red"),
    "lichenification": ("with", "lichenification"), "blue": ("adj", "blue"),
    "umbilicated": ("adj", "umbilicated"), "poikiloderma": ("with", "poikiloderma"),
    "salmon": ("adj", "salmon-coloured"), "acuminate": ("adj", "pointed"), "gray": ("adj", "gray"),
    "pigmented": ("adj", "pigmented"),
}
FINDING: dict[str, str] = {
    "erythema": "redness", "hyperpigmentation": "brown pigmentation", "hypopigmentation": "pallor",
    "scale": "scale", "warty": "warty surface", "dome-shaped": "dome shape", "flat-topped": "flat top",
    "pedunculated": "stalk", "exophytic": "exophytic growth", "umbilicated": "central umbilication",
    "friable": "friability", "translucent": "translucency", "acuminate": "pointed tip",
    "pigmented": "pigmentation", "purple": "purple colour", "yellow": "yellow colour",
    "black": "black colour", "blue": "blue colour", "gray": "gray colour", "salmon": "salmon colour",
    "xerosis": "dry skin", "ulcer": "ulceration",
}
# Colour adjectives come after shape adjectives ("a dome-shaped red papule").
_COLOUR_CONCEPTS = frozenset({"erythema", "hyperpigmentation", "hypopigmentation", "purple", "yellow",
                              "black", "blue", "gray", "salmon", "pigmented", "translucent"})

OBSERVE = (
    "The image shows {np}.",
    "In this image there is {np}.",
    "Looking at the image, I see {np}.",
    "Visible here is {np}.",
    "The lesion in the image is {np}.",
    "On inspection the image shows {np}.",
)
RULE_INTRO = (
    "A textbook rule: {rule}",
    "The matching rule: {rule}",
    "Recall the rule: {rule}",
    "The textbook says: {rule}",
    "Diagnostic rule: {rule}",
)
MATCH = (
    "This rule explains the observed {findings}.",
    "The rule accounts for the {findings} seen here.",
    "It matches the {findings} in this image.",
    "That description covers the {findings} seen here.",
)
MATCH_GENERIC = (
    "The overall appearance fits this rule.",
    "The lesion's look matches this description.",
    "What is visible agrees with this rule.",
)
CONCLUDE = (
    "This points to {dx}.",
    "So the most likely diagnosis is {dx}.",
    "Hence the lesion is {dx}.",
    "Therefore the diagnosis is {dx}.",
)
PRIMARY = (
    "So the primary diagnosis is {dx}.",
    "This suggests {dx} first.",
    "The leading hypothesis is {dx}.",
)
HYPOTHESIS_INTRO = (
    "A first rule to consider: {rule}",
    "One rule comes to mind: {rule}",
    "A first hypothesis comes from: {rule}",
)
HYPOTHESIS = (
    "This suggests {dx} at first.",
    "So {dx} is the first hypothesis.",
    "The initial guess is {dx}.",
)
DDX_INTRO = (
    "A key differential is {other}: {rule}",
    "Consider the differential {other}: {rule}",
    "{Other} can look similar: {rule}",
    "The differential includes {other}: {rule}",
)
RANDOM_INTRO = (
    "For contrast, take the unrelated {other}: {rule}",
    "As a check, weigh {other}: {rule}",
    "Compare an unrelated diagnosis, {other}: {rule}",
)
SUPPORT = (
    "{Dx} explains the {findings}",
    "{Dx} accounts for the observed {findings}",
    "In keeping with {dx}, the image shows {findings}",
)
AGAINST = (
    "while no {findings} of {other} can be seen.",
    "whereas {other} would show {findings}, not seen here.",
    "and there is no sign of the {findings} typical of {other}.",
)
AGAINST_NONE = (
    "and {other} offers nothing that fits better.",
    "and nothing here favours {other} instead.",
)
TEXTBOOK_CONTRAST = (
    "{Dx} is marked by {a}, whereas {other} shows {b}; the lesion matches {dx}.",
    "The features of {dx} ({a}) fit better than those of {other} ({b}).",
)
TEXTBOOK_CONTRAST_GENERIC = (
    "The lesion matches the rule of {dx} better than that of {other}.",
    "The rule of {dx} describes this lesion more closely than that of {other}.",
)
VERDICT = (
    "The findings fit {dx} better.",
    "{Dx} matches the findings better.",
)
SEPARATOR = (
    "The key difference: {feature}.",
    "What separates them: {feature}.",
    "Distinguishing point: {feature}.",
)
KEEP = (
    "So {dx} remains most likely.",
    "So the diagnosis stays {dx}.",
    "The primary diagnosis, {dx}, is kept.",
    "Thus {dx} is still the best fit.",
)
SWITCH = (
    "So the diagnosis changes from {other} to {dx}.",
    "So I revise the diagnosis to {dx}.",
    "{Dx} fits better, so I switch from {other} to {dx}.",
    "The evidence favours {dx}, so I switch to it.",
)
WALK_GROUP = (
    "These findings suggest a {group} condition, in the subgroup {path}.",
    "Broadly this looks {group}; narrowing down, it belongs to {path}.",
    "The pattern points to the {group} group and, within it, to {path}.",
)
WALK_CANDIDATES = (
    "Candidates:",
    "Differentials to weigh:",
    "Possible diagnoses:",
)
WALK_ITEM = "{dx} (for: {pro}; against: {con})"
WALK_PICK = (
    "{Dx} has the most support and the least against it.",
    "{Dx} fits the findings best.",
    "On balance, {dx} is the most likely.",
)


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def sentence(text: str) -> str:
    """Capitalised, ending with one full stop."""
    text = text.strip()
    return cap(text) if text.endswith((".", "!", "?")) else cap(text) + "."


def article(np_text: str) -> str:
    return ("an " if np_text[:1].lower() in "aeiou" else "a ") + np_text


def join_words(words: Sequence[str], conjunction: str = "and") -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + f" {conjunction} " + words[-1]


def findings(concepts: Sequence[str]) -> list[str]:
    return [FINDING.get(c, c) for c in concepts]


def describe(concepts: Sequence[str], rng: np.random.Generator) -> str:
    """Noun phrase for observed concepts, e.g. 'a scaly red plaque with crust'."""
    styled = [(c, *CONCEPT_STYLE.get(c, ("with", c))) for c in concepts]
    lesions = [w for _, kind, w in styled if kind == "lesion"]
    shapes = [w for c, kind, w in styled if kind == "adj" and c not in _COLOUR_CONCEPTS]
    colours = [w for c, kind, w in styled if kind == "adj" and c in _COLOUR_CONCEPTS]
    extras = [w for _, kind, w in styled if kind == "with"]
    for group in (lesions, shapes, colours, extras):
        rng.shuffle(group)
    noun = lesions[0] if lesions else str(rng.choice(["lesion", "skin lesion"]))
    if len(lesions) > 1:
        noun += " or " + lesions[1]
    adjectives = shapes[:2] + ([" and ".join(colours[:2])] if colours else [])
    text = article(" ".join(adjectives + [noun]))
    if extras:
        text += " with " + join_words(extras[:2])
    return text


def hierarchy_sentence(label: str, ancestors_fine_to_coarse: Sequence[str], malignancy: str) -> str:
    """'{Dx} is a subtype of A, within B, and is generally benign.' (ancestors fine -> coarse)."""
    words = MALIGNANCY_WORDS[malignancy]
    if not ancestors_fine_to_coarse:
        return f"{cap(label)} is a top-level category, and is generally {words}."
    chain = "".join(f", within {a}" for a in ancestors_fine_to_coarse[1:])
    return f"{cap(label)} is a subtype of {ancestors_fine_to_coarse[0]}{chain}, and is generally {words}."


def diagnosis_text(label: str, ancestors_fine_to_coarse: Sequence[str], malignancy: str) -> str:
    return f"{label}. " + hierarchy_sentence(label, ancestors_fine_to_coarse, malignancy)


def pick(rng: np.random.Generator, bank: Sequence[str], **fields: str) -> str:
    """One template of `bank`, filled; `{Dx}`/`{Other}` are the capitalised `dx`/`other`."""
    extra = {k.capitalize(): cap(v) for k, v in fields.items() if k in ("dx", "other")}
    return bank[int(rng.integers(len(bank)))].format(**fields, **extra)
