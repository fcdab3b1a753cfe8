"""Clinical concept vocabulary (SkinCon's 48 concepts) and the map from KB feature words to it.

Observations about an image are expressed as concepts. Names are SkinCon's, lowercased and
without the parenthetical glosses; `SKINCON_COLUMNS` gives the exact SkinCon CSV column of each.
Borders, configurations, sizes and sites have no SkinCon concept, so they map to None.
"""

from __future__ import annotations

from skinr1_jax.knowledge.vocab import FEATURE_FIELDS

SKINCON_COLUMNS: dict[str, str] = {
    "vesicle": "Vesicle", "papule": "Papule", "macule": "Macule", "plaque": "Plaque",
    "abscess": "Abscess", "pustule": "Pustule", "bulla": "Bulla", "patch": "Patch",
    "nodule": "Nodule", "ulcer": "Ulcer", "crust": "Crust", "erosion": "Erosion",
    "excoriation": "Excoriation", "atrophy": "Atrophy", "exudate": "Exudate",
    "purpura": "Purpura/Petechiae", "fissure": "Fissure", "induration": "Induration",
    "xerosis": "Xerosis", "telangiectasia": "Telangiectasia", "scale": "Scale", "scar": "Scar",
    "friable": "Friable", "sclerosis": "Sclerosis", "pedunculated": "Pedunculated",
    "exophytic": "Exophytic/Fungating", "warty": "Warty/Papillomatous",
    "dome-shaped": "Dome-shaped", "flat-topped": "Flat topped",
    "hyperpigmentation": "Brown(Hyperpigmentation)", "translucent": "Translucent",
    "hypopigmentation": "White(Hypopigmentation)", "purple": "Purple", "yellow": "Yellow",
    "black": "Black", "erythema": "Erythema", "comedo": "Comedo",
    "lichenification": "Lichenification", "blue": "Blue", "umbilicated": "Umbilicated",
    "poikiloderma": "Poikiloderma", "salmon": "Salmon", "wheal": "Wheal", "acuminate": "Acuminate",
    "burrow": "Burrow", "gray": "Gray", "pigmented": "Pigmented", "cyst": "Cyst",
}
CONCEPTS: tuple[str, ...] = tuple(SKINCON_COLUMNS)

# Vocabulary word -> concept. Words absent here have no concept (e.g. "smooth", "skin-colored").
_FEATURE_TO_CONCEPT: dict[str, dict[str, str]] = {
    "morphology": {
        "macule": "macule", "patch": "patch", "papule": "papule", "plaque": "plaque",
        "nodule": "nodule", "tumor": "nodule", "vesicle": "vesicle", "bulla": "bulla",
        "pustule": "pustule", "wheal": "wheal", "cyst": "cyst", "erosion": "erosion",
        "ulcer": "ulcer", "atrophy": "atrophy", "scar": "scar", "comedo": "comedo",
        "burrow": "burrow",
    },
    "colors": {
        "pink": "erythema", "red": "erythema", "salmon": "salmon", "violaceous": "purple",
        "purple": "purple", "brown": "hyperpigmentation", "dark brown": "hyperpigmentation",
        "black": "black", "blue": "blue", "gray": "gray", "yellow": "yellow",
        "white": "hypopigmentation", "hypopigmented": "hypopigmentation",
        "depigmented": "hypopigmentation", "translucent": "translucent",
    },
    "surface": {
        "scale": "scale", "crust": "crust", "ulceration": "ulcer", "verrucous": "warty",
        "keratotic": "scale", "pearly": "translucent", "telangiectasia": "telangiectasia",
        "umbilication": "umbilicated", "lichenification": "lichenification",
        "excoriation": "excoriation", "exudate": "exudate", "fissure": "fissure",
        "friable": "friable", "atrophic": "atrophy", "xerosis": "xerosis",
    },
    "elevation": {
        "dome-shaped": "dome-shaped", "pedunculated": "pedunculated", "exophytic": "exophytic",
        "depressed": "atrophy",
    },
}


def concept_of_feature(field: str, word: str) -> str | None:
    """The concept a KB feature word expresses, or None when SkinCon has none for it."""
    if field not in FEATURE_FIELDS:
        raise KeyError(f"unknown feature field {field!r}; expected one of {tuple(FEATURE_FIELDS)}")
    if word not in FEATURE_FIELDS[field]:
        raise KeyError(f"{word!r} is not a {field} word of knowledge.vocab")
    return _FEATURE_TO_CONCEPT.get(field, {}).get(word)

