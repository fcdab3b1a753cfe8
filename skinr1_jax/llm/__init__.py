"""Optional OpenAI-compatible chat client (off by default; see configs/default.py generate.llm)."""

from skinr1_jax.llm.client import ChatClient, LLMError, client_from_config

__all__ = ["ChatClient", "LLMError", "client_from_config"]
