"""The one device default of every command: the one asked for, else CUDA when available, else the CPU."""

from __future__ import annotations

import torch


def default_device(requested: str | None = None) -> str:
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def device_problem(text: str | None) -> str | None:
    """None when ``--device`` names a device of this machine (or is not given), else the problem in one line."""
    if text is None:
        return None
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        return f"--device {text}: not a device; use cpu, cuda or cuda:N"
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"--device {text}: only cpu and cuda devices are supported"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return f"--device {text}: no CUDA device on this machine; use --device cpu"
    if device.index is not None and device.index >= count:
        return f"--device {text}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
    return None
