"""The one home of sha256 in this repository: content hashes of files, tensors and JSON-able values.

Every fingerprint (weights, configs, run identities, caches, neuron files) is built from these helpers, so the
algorithm, the canonical JSON form and the lengths of short forms are defined once. ``tests/test_layout.py``
fails when ``hashlib.sha256`` appears anywhere else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

SHORT = 12  # characters of a short digest in names and role keys (48 bits: no collision among a user's runs)
# Config keys that say how often a training saves its state: they never change what it computes, so no
# fingerprint of a result (a run's config, a repair's role, a training checkpoint) includes them.
INTERVAL_KEYS = ("checkpoint_every", "checkpoint_every_s")


def new_digest(prefix: bytes = b""):
    """An incremental sha256, started with ``prefix`` (a format tag, so different kinds of content never
    share a digest)."""
    digest = hashlib.sha256()
    if prefix:
        digest.update(prefix)
    return digest


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text_sha256(text: str) -> str:
    return bytes_sha256(text.encode())


def json_default(obj):
    if hasattr(obj, "item"):  # numpy and torch scalars
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)  # paths and other plain values


def canonical_json(value: Any) -> str:
    """The JSON text hashed for a value: sorted keys, no spaces, scalars as numbers, sets sorted, paths as
    text (the same value always gives the same text)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=json_default)


def canonical_sha256(value: Any) -> str:
    return text_sha256(canonical_json(value))


def without_intervals(value: Any) -> Any:
    """``value`` with the :data:`INTERVAL_KEYS` left out of every mapping in it (how often a training saves
    does not change its result: a new interval resumes the old state and is the same work)."""
    if isinstance(value, dict):
        return {k: without_intervals(v) for k, v in value.items() if k not in INTERVAL_KEYS}
    if isinstance(value, (list, tuple)):
        return [without_intervals(v) for v in value]
    return value


def file_sha256(path: str | Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def short(digest: str, length: int = SHORT) -> str:
    """A digest's short form for names and keys."""
    return digest[:length]
