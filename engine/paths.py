"""Where the project keeps what it builds or downloads (torch-free: the front door imports it)."""

import os
from pathlib import Path

ENV_CACHE_DIR = "GPTOSS_CACHE_DIR"


def cache_root() -> Path:
    """`$GPTOSS_CACHE_DIR` if set, else `~/.cache/gptoss-serve`: the vocabulary (tiktoken/), the built CPU kernels
    (native/), the Responses store and the audit log live under it."""
    root = os.environ.get(ENV_CACHE_DIR)
    return Path(root) if root else Path.home() / ".cache" / "gptoss-serve"
