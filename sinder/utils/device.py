"""The one device default of every command: the one asked for, else CUDA when available, else the CPU."""

from __future__ import annotations

import torch


def default_device(requested: str | None = None) -> str:
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")
