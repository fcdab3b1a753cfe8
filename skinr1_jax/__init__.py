"""skinr1-jax: Skin-R1 (Liu et al., arXiv 2511.14900) in JAX/Flax."""

__version__ = "0.1.0"
