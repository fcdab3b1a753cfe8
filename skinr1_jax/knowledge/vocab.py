"""Controlled vocabularies of visible findings.

The knowledge base describes diseases only with these words, and the synthetic renderer draws
only these words, so a profile in the KB is always renderable and a rendered image's
ground-truth concepts are always expressible. Adding a word here means teaching the renderer
to draw it.
"""

from __future__ import annotations

# Primary lesion morphology (what a textbook calls the primary lesion).
MORPHOLOGY = (
    "macule", "patch", "papule", "plaque", "nodule", "tumor", "vesicle", "bulla", "pustule",
    "wheal", "cyst", "erosion", "ulcer", "atrophy", "scar", "comedo", "burrow",
)

COLORS = (
    "skin-colored", "pink", "red", "salmon", "violaceous", "purple", "brown", "dark brown",
    "black", "blue", "gray", "yellow", "white", "hypopigmented", "depigmented", "translucent",
)

SURFACE = (
    "smooth", "scale", "crust", "ulceration", "verrucous", "keratotic", "pearly",
    "telangiectasia", "umbilication", "lichenification", "excoriation", "exudate", "fissure",
    "friable", "shiny", "atrophic", "xerosis",
)

BORDER = ("well-defined", "ill-defined", "irregular", "rolled")

CONFIGURATION = (
    "solitary", "multiple", "grouped", "annular", "linear", "reticular", "dermatomal",
    "widespread", "follicular", "symmetric",
)

SIZE = ("small", "medium", "large")  # < 5 mm, 5-20 mm, > 20 mm

ELEVATION = ("flat", "raised", "dome-shaped", "pedunculated", "exophytic", "depressed")

SITES = (
    "face", "scalp", "neck", "trunk", "back", "arms", "legs", "hands", "feet", "nails",
    "flexures", "genitals", "mucosa", "sun-exposed", "extensor surfaces", "generalized",
)

FEATURE_FIELDS = {
    "morphology": MORPHOLOGY,
    "colors": COLORS,
    "surface": SURFACE,
    "border": BORDER,
    "configuration": CONFIGURATION,
    "size": SIZE,
    "elevation": ELEVATION,
    "sites": SITES,
}

MALIGNANCY_CLASSES = ("benign", "precancerous_in_situ", "malignant", "non_neoplastic")
