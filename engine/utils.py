"""Small helpers shared by the engine's entry points: dtype and device names, end-of-sequence ids."""

import json
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def generation_eos_ids(model_dir: Path, config_eos: tuple[int, ...]) -> frozenset[int]:
    """The end-of-sequence ids from config.json and generation_config.json together."""
    ids = set(config_eos)
    path = Path(model_dir) / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id", [])
        ids |= set(eos if isinstance(eos, list) else [eos])
    return frozenset(ids)
