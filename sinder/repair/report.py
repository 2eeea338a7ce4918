"""The repair's report beside the checkpoint (the census is in census.py, Figure 7 in plots.py)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import Tensor

from sinder.utils.atomic import atomic_write_text


def write_report(path: Path, report: dict[str, Any]) -> Path:
    atomic_write_text(path, json.dumps(report, indent=2, default=_jsonable))
    return path


def _jsonable(obj):
    if isinstance(obj, Tensor):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
