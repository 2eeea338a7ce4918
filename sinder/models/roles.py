"""What a backbone's weights are: the typed role, built here and read by its fields everywhere else.

A :class:`Role` is an official release, a register release, a constructed test model, a repair or an
inference-time remedy of base X with config Y, or any other checkpoint. It has two forms: a dict
(:meth:`Role.as_dict`, what a model's ``weights_role`` and a run record's ``backbone.role`` hold) and a short
key (:attr:`Role.key`, ``official:dinov2_vitg14`` or ``repair:sinder:<config>:<base>``) that names it in run
identities, file names and displays. The key is written, never read back: code that needs the kind, remedy or
base reads the fields (:meth:`Role.from_dict` on a stored dict).

Whether a preset is a register release (the ``_reg`` suffix) is decided by :func:`is_register_release` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sinder.utils.hashing import SHORT, canonical_sha256, without_intervals

REGISTER_SUFFIX = "_reg"
RELEASE_KINDS = ("official", "register", "constructed")  # roles named by a preset or constructed model
REMEDIED_KINDS = ("repair", "remedy")  # a repaired file, or an inference-time change of the base's weights


def is_register_release(preset: str) -> bool:
    """True for a preset of the register releases (Darcet et al. 2024): ``dinov2_vitg14_reg``."""
    return str(preset).endswith(REGISTER_SUFFIX)


def official_release_of(preset: str) -> str:
    """The official release a register release was trained from (``dinov2_vitg14_reg`` -> ``dinov2_vitg14``);
    any other preset is its own."""
    preset = str(preset)
    return preset[: -len(REGISTER_SUFFIX)] if is_register_release(preset) else preset


@dataclass(frozen=True, eq=False)
class Role:
    """A backbone's role. Two roles are the same when their keys are (the key is what run identities hash)."""

    kind: str = "other"
    name: str = ""  # the preset or constructed model (official, register, constructed)
    remedy: str = ""  # the remedy that made it (repair, remedy)
    config_sha256: str = ""
    base_sha256: str = ""  # the content hash of the base it was made from
    config: Any = field(default=None, repr=False)  # the remedy's parameters (kept for the record, not compared)

    # ------------------------------------------------------------------------------------ constructors
    @classmethod
    def release(cls, preset: str) -> Role:
        """The official release of ``preset``, or its register release when the preset is one."""
        return cls("register" if is_register_release(preset) else "official", name=str(preset))

    @classmethod
    def constructed(cls, name: str) -> Role:
        return cls("constructed", name=str(name))

    @classmethod
    def remedied(cls, kind: str, remedy: str, config: Any, base_sha256: str) -> Role:
        """A repair (``kind="repair"``: new weights in a file) or remedy (``"remedy"``: an inference-time change)
        of the backbone whose tensors hash to ``base_sha256``, with ``config`` (hashed into ``config_sha256``,
        without the checkpoint interval: the same tensors from runs that saved at other intervals are one role)."""
        if kind not in REMEDIED_KINDS:
            raise ValueError(f"a remedied role has kind {' or '.join(REMEDIED_KINDS)}, got {kind!r}")
        config = dict(config) if isinstance(config, Mapping) else config
        return cls(kind, remedy=str(remedy), config_sha256=canonical_sha256(without_intervals(config)), base_sha256=str(base_sha256),
                   config=config)  # fmt: skip

    @classmethod
    def from_dict(cls, role: Role | Mapping[str, Any] | None) -> Role:
        """The role a stored dict describes (a model's ``weights_role``, a record's ``backbone.role``); None and
        an empty dict are ``other``."""
        if isinstance(role, Role):
            return role
        if role is None:
            return cls()
        if not isinstance(role, Mapping):
            raise TypeError(f"a role is a dict or a Role, got {type(role).__name__} (role keys are never parsed)")
        # str() of whatever is stored, as the key was always written (a stored None reads "None")
        text = {k: str(role.get(k, "")) for k in ("name", "remedy", "config_sha256", "base_sha256")}
        return cls(str(role.get("kind", "other")), **text, config=role.get("config"))

    # ------------------------------------------------------------------------------------ forms
    def as_dict(self) -> dict[str, Any]:
        """The dict form (a model's ``weights_role``, a record's ``backbone.role``)."""
        if self.kind in RELEASE_KINDS:
            return {"kind": self.kind, "name": self.name}
        if self.kind in REMEDIED_KINDS:
            return {"kind": self.kind, "remedy": self.remedy, "base_sha256": self.base_sha256, "config": self.config,
                    "config_sha256": self.config_sha256}  # fmt: skip
        return {"kind": self.kind}

    @property
    def key(self) -> str:
        """The short, stable text form: ``official:dinov2_vitg14``, ``repair:sinder:<config>:<base>``,
        ``remedy:ttr:<config>:<base>``, ``other``. For names and display only: never parse it."""
        if self.kind in RELEASE_KINDS:
            return f"{self.kind}:{self.name}"
        if self.kind in REMEDIED_KINDS:
            return f"{self.kind}:{self.remedy}:{self.config_sha256[:SHORT]}:{self.base_sha256[:SHORT]}"
        return self.kind

    def __str__(self) -> str:
        return self.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Role) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    # ------------------------------------------------------------------------------------ questions
    @property
    def is_remedied(self) -> bool:
        """Made from a base by a remedy (a repair or an inference-time remedy)."""
        return self.kind in REMEDIED_KINDS

    @property
    def is_sinder_repair(self) -> bool:
        return self.kind == "repair" and self.remedy == "sinder"

    @property
    def official_release(self) -> Role | None:
        """For a register release, the official release of the same architecture (for a constructed register
        release such as ``dinov2_tiny_standin_reg``, the constructed model it pairs with); else None."""
        if self.kind == "register":
            return Role("official", name=official_release_of(self.name))
        if self.kind == "constructed" and is_register_release(self.name):
            return Role("constructed", name=official_release_of(self.name))
        return None
