"""Config files: plain Python `get_config()` returning the schema of configs/default.py."""
