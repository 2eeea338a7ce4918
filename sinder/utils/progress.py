"""The one rule for whether a tqdm bar shows, used by every long loop of sinder and the benchmarks.

``enabled``: True shows the bar (also into a log file: the user asked), False hides it, None shows it only when
stderr is a terminal (no bar noise in logs). Whatever ``enabled`` says, only rank 0 of a torch.distributed job
draws bars: N ranks drawing the same bar garble the console.
"""

from __future__ import annotations

import sys


def process_rank() -> int:
    """This process's torch.distributed rank (0 when not distributed)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def show_bar(enabled: bool | None = None) -> bool:
    """Whether a bar shows under the rule above."""
    if process_rank() != 0 or enabled is False:
        return False
    if enabled is None:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())
    return True


def progress(iterable=None, *, enabled: bool | None = None, leave: bool = False, **kwargs):
    """``tqdm(iterable, ...)``, shown or hidden by :func:`show_bar`; cleared when done unless ``leave``."""
    from tqdm import tqdm

    return tqdm(iterable, disable=not show_bar(enabled), leave=leave, **kwargs)
