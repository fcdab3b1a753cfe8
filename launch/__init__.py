"""`python -m launch`: the command line of skinr1-jax (see launch/__main__.py)."""
