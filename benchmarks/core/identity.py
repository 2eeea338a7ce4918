"""The run identity: what makes two runs the same work, used by every lookup (resume, compare, report, folders).

A run is the same work as another when it evaluates the same backbone (the content hash of its tensors and
its role: an official or register release, a repair of base X with config Y, ...) on the same task (name and
version) with the same resolved config, seed and profile. Labels are display names only: the same weights
under another label are the same work, and two checkpoints under one label are not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from sinder.models.weights import role_key
from sinder.utils.hashing import canonical_sha256, json_default

from .checkpointing import without_intervals


def config_sha256(config: Mapping[str, Any]) -> str:
    """The hash of a resolved task config, as a record stores it (JSON round trip first, so a record's
    ``config`` hashes to the same value as the config it was made from). The checkpoint interval is left
    out: how often a training saves does not change its result."""
    return canonical_sha256(without_intervals(json.loads(json.dumps(dict(config), default=json_default))))


@dataclass(frozen=True)
class BackboneIdentity:
    """A backbone by what it is: tensors and role. ``role`` is the text form of ``sinder.models.weights.role_key``."""

    sha256: str
    role: str = "other"

    @property
    def short(self) -> str:
        return f"{self.role}@{self.sha256[:12]}"


@dataclass(frozen=True)
class RunIdentity:
    backbone_sha256: str
    role: str
    task: str
    task_version: str
    config_sha256: str
    seed: int
    profile: str

    @classmethod
    def of(cls, *, backbone_sha256: str, role: Mapping[str, Any] | str | None, task: str, task_version: str,
           config: Mapping[str, Any], seed: int, profile: str) -> RunIdentity:  # fmt: skip
        role_text = role if isinstance(role, str) else role_key(role)
        return cls(backbone_sha256, role_text, task, str(task_version), config_sha256(config), int(seed), profile)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RunIdentity:
        """The identity a record was written under; derived from its fields for records that predate it."""
        stored = record.get("identity")
        if isinstance(stored, Mapping):
            fields = {k: stored[k] for k in cls.__dataclass_fields__ if k in stored}
            if len(fields) == len(cls.__dataclass_fields__):
                return cls(**fields)
        backbone = record["backbone"]
        return cls.of(backbone_sha256=backbone["weights_sha256"], role=backbone.get("role"), task=record["task"],
                      task_version=str(record.get("task_version", "1")), config=record.get("config", {}),
                      seed=record.get("seed", 0), profile=record["profile"])  # fmt: skip

    @property
    def backbone(self) -> BackboneIdentity:
        return BackboneIdentity(self.backbone_sha256, self.role)

    @property
    def key(self) -> str:
        """A short stable name of this identity, for file and folder names and lock files."""
        return canonical_sha256(asdict(self))[:20]

    def without_seed(self) -> RunIdentity:
        """The identity shared by repeats of one measurement (runs that differ only in the seed)."""
        return replace(self, seed=-1)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}
