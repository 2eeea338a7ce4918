"""``--cfg-options KEY=VALUE ...``: the override convention of mmseg and mmpretrain, for ``repair`` and ``run``.

Keys are dotted paths. A value is a list when written as mmengine's ``DictAction`` writes one (``a,b``,
``[a,b]`` or ``(a,b)``, nested brackets allowed, a trailing comma ignored), each item typed as YAML types it
(``1e-4`` is a number, ``null`` and ``None`` are None, ``true`` is true, ``auto`` is text); a value quoted
whole (``'a,b'``) is that text. What a key may be, and its type, is checked by the config it lands in
(``RepairConfig.from_mapping`` for the repair, ``benchmarks.core.task_config`` for a task's profile).
The list syntax is ours (mmengine keeps its parser private); tests/test_task_config.py pins it to DictAction's.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

_BRACKETS = {"[": "]", "(": ")"}


def parse_value(text: str) -> Any:
    """A ``--cfg-options`` value: a list for ``a,b``, ``[a,b]`` or ``(a,b)`` (items parsed alike, so brackets
    nest), else one scalar typed as YAML types it. Unbalanced brackets are a ValueError."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]  # quoted whole: text, never split
    if text[:1] in _BRACKETS and _closing(text, 0) == len(text) - 1:
        return [parse_value(item) for item in _split(text[1:-1])]
    items = _split(text)
    if len(items) > 1 or text.rstrip().endswith(","):
        return [parse_value(item) for item in items]
    return _scalar(text)


def _closing(text: str, start: int) -> int:
    """The index of the bracket closing the one at ``start``."""
    depth = []
    for i in range(start, len(text)):
        if text[i] in _BRACKETS:
            depth.append(_BRACKETS[text[i]])
        elif text[i] in _BRACKETS.values():
            if not depth or depth.pop() != text[i]:
                break
            if not depth:
                return i
    raise ValueError(f"unbalanced brackets in {text!r}")


def _split(text: str) -> list[str]:
    """``text`` split at its top-level commas (not inside brackets); no empty last item."""
    items, start, i = [], 0, 0
    while i < len(text):
        if text[i] in _BRACKETS:
            i = _closing(text, i)
        elif text[i] in _BRACKETS.values():
            raise ValueError(f"unbalanced brackets in {text!r}")
        elif text[i] == ",":
            items.append(text[start:i])
            start = i + 1
        i += 1
    if text[start:].strip():
        items.append(text[start:])
    return [item.strip() for item in items]


def _scalar(text: str) -> Any:
    import yaml

    if text == "None":
        return None  # Python's spelling, as DictAction reads it
    for number in (int, float):  # before YAML: 1e-4 (YAML 1.1 text), 010 (YAML 1.1 octal) and 1_000 as Python
        try:
            return number(text)
        except ValueError:
            pass
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(loaded, dict | list) else loaded


def parse_cfg_options(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x,y"]`` -> ``{"a.b": 1, "c": ["x", "y"]}``; an item without ``=`` is a ValueError."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--cfg-options {item!r}: write KEY=VALUE (e.g. max_iters=100 for repair, "
                             "imagenet_linear.iterations=100 for run)")
        try:
            out[key.strip()] = parse_value(value)
        except ValueError as err:  # name the option: "unbalanced brackets" alone does not say which one
            raise ValueError(f"--cfg-options {item!r}: {err}") from None
    return out


class CfgOptionsAction(argparse.Action):
    """``--cfg-options KEY=VALUE ...`` (repeatable) into one dict; a malformed item is a usage error: one line
    ``error: ...`` and exit 2."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = dict(getattr(namespace, self.dest, None) or {})
        try:
            options.update(parse_cfg_options(values or []))
        except ValueError as err:  # one line, as every usage error: no usage block above it
            parser.exit(2, f"error: {err}\n")
        setattr(namespace, self.dest, options)
