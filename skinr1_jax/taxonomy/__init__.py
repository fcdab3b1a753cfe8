"""Disease taxonomy: the tree, name resolution and tree-distance matrices."""

from skinr1_jax.taxonomy.resolve import UNKNOWN, normalize
from skinr1_jax.taxonomy.tree import NINE_PARTITION_RENAMES, Node, Taxonomy, TaxonomyError, load_default_taxonomy

__all__ = ["NINE_PARTITION_RENAMES", "UNKNOWN", "Node", "Taxonomy", "TaxonomyError", "load_default_taxonomy", "normalize"]
