"""Synthetic twins: small datasets written in exactly the on-disk layout of the real ones, deterministic from a
seed (same seed -> byte-identical files), with known labels/depth and content a tiny backbone can learn.

``write_synthetic(name, out_dir)`` makes ``out_dir`` the dataset root: ``open_dataset(name, out_dir, split)``
reads it back.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.data.specs import REGISTRY, get_entry
from benchmarks.data.synth.common import SampleTruth
from benchmarks.data.synth.files import TreeWriter
from sinder.utils.atomic import temp_prefix

# name -> module of each twin writer, read from the registry (each dataset's entry names its twin).
WRITERS = REGISTRY.view(lambda entry: entry.twin)


@dataclass
class SynthResult:
    name: str
    root: Path
    files: list[str]  # relative to root, in writing order
    truths: dict[str, list[SampleTruth]] = field(repr=False)


def defaults(name: str) -> dict:
    return dict(get_entry(name).twin_module().DEFAULTS)


def write_synthetic(
    name: str,
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    size: int | tuple[int, int] | None = None,
    overwrite: bool = False,
    **options,
) -> SynthResult:
    """Write the synthetic twin of dataset ``name`` as the content of ``out_dir``.

    ``n_train`` / ``n_val``: samples per split (per class for imagenet; potsdam also writes ``n_train``
    unlabelled images); ``size``: (height, width), or the height with the dataset's usual aspect ratio.
    Options: imagenet ``n_classes`` (default 10). The twin is built in a staging folder beside ``out_dir``
    and renamed into place, so ``out_dir`` never holds a half-written dataset. An existing non-empty
    ``out_dir`` is an error unless ``overwrite`` (then it is deleted first).
    """
    module = get_entry(name).twin_module()
    conf = dict(module.DEFAULTS)
    default_train, default_val, base_size = conf.pop("n_train"), conf.pop("n_val"), conf.pop("size")
    n_train = default_train if n_train is None else n_train
    n_val = default_val if n_val is None else n_val
    if size is None:
        size = base_size
    elif isinstance(size, int):
        size = (size, max(round(size * base_size[1] / base_size[0]), 1))
    size = (int(size[0]), int(size[1]))
    if min(size) < 16 or n_train < 1 or n_val < 1:
        raise ValueError(
            f"{name} twin: need size >= 16 px and at least one sample per split "
            f"(got size={size}, n_train={n_train}, n_val={n_val})"
        )
    conf.update(options)

    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; choose an empty folder or replace it (overwrite=True)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(out_dir.name), dir=out_dir.parent))
    try:
        writer = TreeWriter(staging)
        truths = module.write(writer, seed, n_train, n_val, size, **conf)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SynthResult(name, out_dir, writer.files, truths)


__all__ = ["WRITERS", "SampleTruth", "SynthResult", "defaults", "write_synthetic"]
