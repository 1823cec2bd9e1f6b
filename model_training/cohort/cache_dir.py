"""Where the preprocessed-tensor cache lives by default: in the user's cache directory, never in the checkout.

``$XDG_CACHE_HOME/ich-expansion`` (when ``XDG_CACHE_HOME`` is an absolute path, as the XDG base directory
specification requires), else ``~/.cache/ich-expansion``; training and evaluation cache into its ``preprocessed``
folder unless ``--cache-dir`` (or ``$ICH_CACHE_DIR`` for the command line) names another one. Standard library
only, so command-line parsers can use it without loading the numerical stack.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_CACHE_NAME = "ich-expansion"


def user_cache_dir() -> Path:
    """The project's folder in the user's cache directory (see the module docstring)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / APP_CACHE_NAME


def default_cache_dir() -> Path:
    """The default preprocessed-tensor cache of training and evaluation: ``<user cache dir>/preprocessed``."""
    return user_cache_dir() / "preprocessed"
