"""Reading the project's JSON data files with an error that names the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, error: type[Exception], what: str) -> Any:
    """The parsed file; a missing or unreadable file raises `error` naming it and `what` it is."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: unreadable {what} ({e})") from None
