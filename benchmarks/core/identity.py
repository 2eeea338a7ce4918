"""The run identity: what makes two runs the same work, used by every lookup (resume, compare, report, folders).

A run is the same work as another when it evaluates the same backbone (the content hash of its tensors and
its role: an official or register release, a repair of base X with config Y, ...) on the same task (name and
version) with the same resolved config, seed and profile. Labels are display names only: the same weights
under another label are the same work, and two checkpoints under one label are not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from sinder.models.roles import Role
from sinder.utils.hashing import canonical_sha256, json_default

from .checkpointing import without_intervals

__all__ = ["BackboneIdentity", "Role", "RunIdentity", "config_sha256"]


def config_sha256(config: Mapping[str, Any]) -> str:
    """The hash of a resolved task config, as a record stores it (JSON round trip first, so a record's
    ``config`` hashes to the same value as the config it was made from). The checkpoint interval is left
    out: how often a training saves does not change its result."""
    return canonical_sha256(without_intervals(json.loads(json.dumps(dict(config), default=json_default))))


@dataclass(frozen=True)
class BackboneIdentity:
    """A backbone by what it is: tensors and role (a typed :class:`Role`; its key is only for display)."""

    sha256: str
    role: Role = Role()

    @property
    def short(self) -> str:
        return f"{self.role.key}@{self.sha256[:12]}"

    def __repr__(self) -> str:  # the role by its key: reports and the gate sort backbones by this text
        return f"BackboneIdentity(sha256={self.sha256!r}, role={self.role.key!r})"


@dataclass(frozen=True)
class RunIdentity:
    """One run's identity. ``role`` is typed; :meth:`as_dict` is its one serialisation (the role by its key), which
    ``key`` hashes and records store under ``identity``. A record is read back through its ``backbone.role``
    dict (:meth:`from_record`), never by parsing the key."""

    backbone_sha256: str
    role: Role
    task: str
    task_version: str
    config_sha256: str
    seed: int
    profile: str

    @classmethod
    def of(cls, *, backbone_sha256: str, role: Role | Mapping[str, Any] | None, task: str, task_version: str,
           config: Mapping[str, Any], seed: int, profile: str) -> RunIdentity:  # fmt: skip
        return cls(backbone_sha256, Role.from_dict(role), task, str(task_version), config_sha256(config), int(seed),
                   profile)  # fmt: skip

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RunIdentity:
        """The identity a record was written under; derived from its fields for records that predate it. The
        role comes from the record's ``backbone.role`` dict (the identity's ``role`` text is its key, written
        from that same dict, and is not read back)."""
        backbone = record["backbone"]
        role = Role.from_dict(backbone.get("role"))
        stored = record.get("identity")
        if isinstance(stored, Mapping):
            written = {k: stored[k] for k in cls.__dataclass_fields__ if k in stored}
            if len(written) == len(cls.__dataclass_fields__):
                return cls(**{**written, "role": role})
        return cls.of(backbone_sha256=backbone["weights_sha256"], role=role, task=record["task"],
                      task_version=str(record.get("task_version", "1")), config=record.get("config", {}),
                      seed=record.get("seed", 0), profile=record["profile"])  # fmt: skip

    @property
    def backbone(self) -> BackboneIdentity:
        return BackboneIdentity(self.backbone_sha256, self.role)

    def _fields(self) -> dict[str, Any]:
        """The serialised fields (the role by its key): what ``key`` hashes, byte for byte as ever."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"role": self.role.key}

    @property
    def key(self) -> str:
        """A short stable name of this identity, for file and folder names and lock files."""
        return canonical_sha256(self._fields())[:20]

    def without_seed(self) -> RunIdentity:
        """The identity shared by repeats of one measurement (runs that differ only in the seed)."""
        return replace(self, seed=-1)

    def as_dict(self) -> dict[str, Any]:
        return {**self._fields(), "key": self.key}
