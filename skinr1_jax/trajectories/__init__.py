"""Textbook reasoning trajectories: generator, verifier, SFT prompts."""

from skinr1_jax.trajectories.generate import GenerationResult, format_summary, generate_trajectories, summarize
from skinr1_jax.trajectories.prompts import ALL_TYPES, DDX_TYPES, basic_prompt, ddx_prompt, sft_prompt, walk_prompt
from skinr1_jax.trajectories.templates import MALIGNANCY_WORDS, diagnosis_text, hierarchy_sentence
from skinr1_jax.trajectories.verify import split_response, verify

__all__ = ["ALL_TYPES", "DDX_TYPES", "GenerationResult", "MALIGNANCY_WORDS", "basic_prompt", "ddx_prompt",
           "diagnosis_text", "format_summary", "generate_trajectories", "hierarchy_sentence", "sft_prompt",
           "split_response", "summarize", "verify", "walk_prompt"]
