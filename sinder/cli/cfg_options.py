"""``--cfg-options KEY=VALUE ...``: the override convention of mmseg and mmpretrain, for ``repair`` and ``run``.

Keys are dotted paths; values follow mmengine's ``DictAction`` (``a,b``, ``[a,b]`` or ``(a,b)`` are lists) with
each item typed as YAML types it. What a key may be, and its type, is checked by the config it lands in
(``RepairConfig.from_mapping`` for the repair, ``benchmarks.core.task_config`` for a task's profile).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def parse_value(text: str) -> Any:
    """A ``--cfg-options`` value: mmengine DictAction's lists (``a,b``, ``[a,b]``, ``(a,b)``), each item typed
    as YAML types it (``1e-4`` is a number, ``null`` is None, ``true`` is true/false)."""
    import yaml
    from mmengine.config import DictAction

    def typed(item):
        if isinstance(item, list | tuple):
            return [typed(x) for x in item]
        if not isinstance(item, str):
            return item
        try:
            loaded = yaml.safe_load(item)
        except yaml.YAMLError:
            return item
        if isinstance(loaded, str):
            try:
                return float(loaded)  # YAML 1.1 reads 1e-4 (no dot) as text
            except ValueError:
                return loaded
        return loaded if not isinstance(loaded, dict) else item

    return typed(DictAction._parse_iterable(text))


def parse_cfg_options(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x,y"]`` -> ``{"a.b": 1, "c": ["x", "y"]}``; an item without ``=`` is a ValueError."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--cfg-options {item!r}: write KEY=VALUE (e.g. max_iters=100 for repair, "
                             "imagenet_linear.iterations=100 for run)")
        out[key.strip()] = parse_value(value)
    return out


class CfgOptionsAction(argparse.Action):
    """``--cfg-options KEY=VALUE ...`` (repeatable) into one dict; a malformed item is a usage error (exit 2)."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = dict(getattr(namespace, self.dest, None) or {})
        try:
            options.update(parse_cfg_options(values or []))
        except ValueError as err:
            parser.error(str(err))
        setattr(namespace, self.dest, options)
