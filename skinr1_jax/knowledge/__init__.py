"""Textbook knowledge base: controlled vocabularies, clinical concepts, profiles, DDx graph."""

from skinr1_jax.knowledge.concepts import CONCEPTS, SKINCON_COLUMNS, concept_of_feature
from skinr1_jax.knowledge.ddx import DDxGraph, DDxGraphError
from skinr1_jax.knowledge.kb import KnowledgeBase, KnowledgeError, Profile, load_default_kb

__all__ = ["CONCEPTS", "SKINCON_COLUMNS", "DDxGraph", "DDxGraphError", "KnowledgeBase", "KnowledgeError",
           "Profile", "concept_of_feature", "load_default_kb"]
