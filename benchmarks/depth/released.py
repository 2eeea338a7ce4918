"""DINOv2's released NYU depth heads: official file names and loading them into our heads (inference only).

DINOv2 publishes ``{arch}_nyu_{linear,linear4,dpt}_head.pth`` under https://dl.fbaipublicfiles.com/dinov2/{arch}/:
mmcv checkpoints whose ``state_dict`` holds the head under ``decode_head.``. They were trained with bins over
[1e-3, 10] m (the hub loader's max_depth 80 is a known bug), so they are evaluated with the task's depth range.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sinder.models.weights import file_sha256

RELEASED_NAMES = {"linear1": "linear", "linear4": "linear4", "dpt": "dpt"}
PREFIX = "decode_head."


def released_head_file(arch: str, kind: str) -> str:
    """The official file name of the released ``kind`` head (linear1, linear4, dpt) for backbone ``arch``."""
    if kind not in RELEASED_NAMES:
        raise ValueError(f"no released depth head of kind {kind!r}; kinds: {', '.join(RELEASED_NAMES)}")
    return f"{arch}_nyu_{RELEASED_NAMES[kind]}_head.pth"


def load_released_head(path: str | Path, head: nn.Module) -> dict[str, str]:
    """Load the released checkpoint at ``path`` into ``head`` (strict); returns ``{file, sha256, source}``."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable, or objects weights_only refuses
        raise ValueError(f"released head {path}: cannot read it with torch.load(weights_only=True) ({err})") from err
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"released head {path}: not a checkpoint dict with a state_dict")
    weights = {key[len(PREFIX) :]: value for key, value in state.items() if key.startswith(PREFIX)}
    if not weights:
        raise ValueError(f"released head {path}: no '{PREFIX}*' weights; is it a DINOv2 depth head checkpoint?")
    try:
        head.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"released head {path} does not fit this head/backbone: {first}") from err
    return {"source": "released head", "file": path.name, "sha256": file_sha256(path)}
