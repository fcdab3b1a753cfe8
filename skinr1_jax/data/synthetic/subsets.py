"""Which diseases synthetic_derm renders, and the real Fitzpatrick17k class frequencies.

The counts are the `label` column of Fitzpatrick17k's published CSV (16,577 rows; Groh et al.,
CVPR 2021), embedded so that a fresh clone needs no data to build the long-tailed variant.
"""

from __future__ import annotations

# Images per Fitzpatrick17k label (the CSV's names, verbatim, which are the taxonomy's names).
FITZPATRICK17K_COUNTS: dict[str, int] = {
    "acanthosis nigricans": 92,
    "acne": 183,
    "acne vulgaris": 335,
    "acquired autoimmune bullous diseaseherpes gestationis": 67,
    "acrodermatitis enteropathica": 92,
    "actinic keratosis": 175,
    "allergic contact dermatitis": 430,
    "aplasia cutis": 72,
    "basal cell carcinoma": 468,
    "basal cell carcinoma morpheiform": 62,
    "becker nevus": 63,
    "behcets disease": 63,
    "calcinosis cutis": 80,
    "cheilitis": 106,
    "congenital nevus": 68,
    "dariers disease": 153,
    "dermatofibroma": 79,
    "dermatomyositis": 151,
    "disseminated actinic porokeratosis": 60,
    "drug eruption": 200,
    "drug induced pigmentary changes": 71,
    "dyshidrotic eczema": 83,
    "eczema": 204,
    "ehlers danlos syndrome": 127,
    "epidermal nevus": 91,
    "epidermolysis bullosa": 70,
    "erythema annulare centrifigum": 88,
    "erythema elevatum diutinum": 55,
    "erythema multiforme": 236,
    "erythema nodosum": 81,
    "factitial dermatitis": 66,
    "fixed eruptions": 125,
    "folliculitis": 342,
    "fordyce spots": 100,
    "granuloma annulare": 211,
    "granuloma pyogenic": 75,
    "hailey hailey disease": 174,
    "halo nevus": 82,
    "hidradenitis": 90,
    "ichthyosis vulgaris": 65,
    "incontinentia pigmenti": 102,
    "juvenile xanthogranuloma": 149,
    "kaposi sarcoma": 156,
    "keloid": 156,
    "keratosis pilaris": 78,
    "langerhans cell histiocytosis": 60,
    "lentigo maligna": 83,
    "lichen amyloidosis": 77,
    "lichen planus": 491,
    "lichen simplex": 97,
    "livedo reticularis": 60,
    "lupus erythematosus": 410,
    "lupus subacute": 111,
    "lyme disease": 129,
    "lymphangioma": 100,
    "malignant melanoma": 111,
    "melanoma": 261,
    "milia": 112,
    "mucinosis": 92,
    "mucous cyst": 79,
    "mycosis fungoides": 182,
    "myiasis": 67,
    "naevus comedonicus": 73,
    "necrobiosis lipoidica": 123,
    "nematode infection": 260,
    "neurodermatitis": 69,
    "neurofibromatosis": 189,
    "neurotic excoriations": 73,
    "neutrophilic dermatoses": 361,
    "nevocytic nevus": 86,
    "nevus sebaceous of jadassohn": 95,
    "papilomatosis confluentes and reticulate": 150,
    "paronychia": 59,
    "pediculosis lids": 151,
    "perioral dermatitis": 61,
    "photodermatoses": 348,
    "pilar cyst": 93,
    "pilomatricoma": 53,
    "pityriasis lichenoides chronica": 73,
    "pityriasis rosea": 193,
    "pityriasis rubra pilaris": 278,
    "porokeratosis actinic": 183,
    "porokeratosis of mibelli": 78,
    "porphyria": 127,
    "port wine stain": 59,
    "prurigo nodularis": 170,
    "psoriasis": 653,
    "pustular psoriasis": 53,
    "pyogenic granuloma": 113,
    "rhinophyma": 91,
    "rosacea": 102,
    "sarcoidosis": 349,
    "scabies": 339,
    "scleroderma": 309,
    "scleromyxedema": 108,
    "seborrheic dermatitis": 126,
    "seborrheic keratosis": 69,
    "solid cystic basal cell carcinoma": 66,
    "squamous cell carcinoma": 581,
    "stasis edema": 69,
    "stevens johnson syndrome": 113,
    "striae": 67,
    "sun damaged skin": 66,
    "superficial spreading melanoma ssm": 118,
    "syringoma": 127,
    "telangiectases": 126,
    "tick bite": 73,
    "tuberous sclerosis": 141,
    "tungiasis": 152,
    "urticaria": 151,
    "urticaria pigmentosa": 112,
    "vitiligo": 166,
    "xanthomas": 53,
    "xeroderma pigmentosum": 81,
}

# Images per Fitzpatrick skin type 1..6 in the same CSV (`fitzpatrick_scale`; 565 unknown).
FITZPATRICK17K_SKIN_TYPE_COUNTS: dict[int, int] = {1: 2947, 2: 4808, 3: 3308, 4: 2781, 5: 1533, 6: 635}

# The default subset: 12 diseases a tiny ViT separates on a 2-core CPU in minutes. Three groups,
# six subgroups, with sibling pairs/triples inside benign melanocyte (nevocytic / halo nevus),
# benign dermal (dermatofibroma / pyogenic granuloma), malignant epidermal (BCC / SCC / actinic
# keratosis), malignant melanoma (melanoma / lentigo maligna) and inflammatory (psoriasis /
# vitiligo), so the hierarchy matters.
DEFAULT_LEAVES: tuple[str, ...] = (
    "nevocytic nevus", "halo nevus", "seborrheic keratosis", "dermatofibroma",
    "pyogenic granuloma", "basal cell carcinoma", "squamous cell carcinoma", "actinic keratosis",
    "melanoma", "lentigo maligna", "psoriasis", "vitiligo",
)

# All 114 leaves of the Fitzpatrick17k tree.
FULL_LEAVES: tuple[str, ...] = tuple(sorted(FITZPATRICK17K_COUNTS))

SUBSETS: dict[str, tuple[str, ...]] = {"default": DEFAULT_LEAVES, "full": FULL_LEAVES}


def leaf_names(subset: str) -> tuple[str, ...]:
    """Disease names of a named subset ("default" or "full")."""
    try:
        return SUBSETS[subset]
    except KeyError:
        raise ValueError(f"data.subset={subset!r}: expected one of {sorted(SUBSETS)}") from None
