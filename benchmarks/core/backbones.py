"""Backbone specs of ``sinder-bench run --backbone``: parse, check up front, load, and the smoke defaults.

A spec is ``[LABEL=]NAME[:WEIGHTS]``: NAME is a preset, a constructed (tiny) backbone, a config file or a
checkpoint that carries its architecture (a Hugging Face DINOv2 folder, an official or timm weights file);
WEIGHTS an optional weights file (any of those formats); LABEL the name shown in records and tables (default:
the weights file's stem, else NAME). Examples: ``dinov2_vitg14``, ``sinder=dinov2_vitg14:ckpt/sinder_vitg14.safetensors``.
The label only displays: runs are identified by the weights' content hash and role (``identity.py``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SMOKE_BACKBONE = "dinov2_tiny_defective"
SMOKE_FALLBACK = "dinov2_tiny_swiglu_random"
REPAIRED_SUFFIX = "_sinder"


@dataclass(frozen=True)
class BackboneSpec:
    text: str
    name: str
    weights: str | None
    label: str

    def as_record(self, sha256: str, source: str = "", role: dict | None = None) -> dict:
        return {"spec": self.text, "name": self.name, "weights": self.weights, "label": self.label,
                "weights_sha256": sha256, "source": source, "role": dict(role or {"kind": "other"})}  # fmt: skip


def parse_backbone_spec(text: str) -> BackboneSpec:
    """``[LABEL=]NAME[:WEIGHTS]`` -> :class:`BackboneSpec` (ValueError naming the bad spec)."""
    raw = text.strip()
    label = None
    head, eq, rest = raw.partition("=")
    if eq and not any(c in head for c in ":/\\"):  # an '=' inside the weights path is not a label
        label, raw = head.strip(), rest.strip()
        if not re.fullmatch(r"[A-Za-z0-9._+-]+", label or ""):
            raise ValueError(f"--backbone {text!r}: label {label!r} must be letters, digits, '.', '_', '+' or '-'")
    name, _, weights = raw.partition(":")
    name, weights = name.strip(), (weights.strip() or None)
    if not name:
        raise ValueError(f"--backbone {text!r}: expected [LABEL=]NAME[:WEIGHTS], e.g. dinov2_vitg14 or "
                         "sinder=dinov2_vitg14:sinder.safetensors")  # fmt: skip
    if label is None:
        label = Path(weights).stem if weights else Path(name).stem
    return BackboneSpec(text=text, name=name, weights=weights, label=label)


def backbone_problem(spec: BackboneSpec) -> str | None:
    """Why ``spec`` cannot be loaded (a missing weights file, an unknown name), without building the model."""
    from sinder import weights as W
    from sinder.checkpoint_formats import checkpoint_problem, is_checkpoint_path

    named_checkpoint = spec.name not in W.PRESETS and is_checkpoint_path(spec.name)
    if spec.weights is not None:
        if not Path(spec.weights).exists():
            return f"weights file {spec.weights} (backbone {spec.text!r}) does not exist"
        try:
            architecture = W.checkpoint_config(spec.name) if named_checkpoint else spec.name
        except (OSError, ValueError) as err:
            return f"backbone {spec.text!r}: {err}"
        problem = W.check_weights_file(architecture, spec.weights)  # opens it: keys and shapes vs the architecture
        return f"backbone {spec.text!r}: {problem}" if problem else None
    if named_checkpoint:  # LABEL=PATH: a self-describing checkpoint, opened like any weights file
        problem = checkpoint_problem(spec.name)
        if problem is None:
            try:
                problem = W.check_weights_file(W.checkpoint_config(spec.name), spec.name)
            except (OSError, ValueError) as err:
                problem = str(err)
        return f"backbone {spec.text!r}: {problem}" if problem else None
    W.list_backbones()  # also imports the modules that register constructed backbones
    if spec.name in W.SYNTHETIC_BACKBONES:
        return None
    try:
        W.architecture_config(spec.name)
    except ValueError as err:
        return f"backbone {spec.text!r}: {err}"
    try:
        path = W.resolve_weights_path(spec.name)
    except FileNotFoundError as err:
        return str(err)
    problem = W.check_weights_file(spec.name, path)
    return f"backbone {spec.text!r}: {problem}" if problem else None


def load(spec: BackboneSpec, device="cpu"):
    """The model (eval mode) with ``weights_sha256``; see ``sinder.weights.load_backbone``."""
    from sinder.weights import load_backbone

    return load_backbone(spec.name, weights=spec.weights, device=device)


def smoke_specs(log: Callable[[str], None] = print) -> list[BackboneSpec]:
    """The smoke profile's default backbone: the defective tiny model (or, without it, a random tiny one)."""
    from sinder import weights as W

    W.list_backbones()  # also imports the modules that register constructed backbones
    if SMOKE_BACKBONE in W.SYNTHETIC_BACKBONES:
        return [parse_backbone_spec(SMOKE_BACKBONE)]
    log(f"note: {SMOKE_BACKBONE} is not in this checkout (sinder.defective_model); smoke runs on {SMOKE_FALLBACK}")
    return [parse_backbone_spec(SMOKE_FALLBACK)]


def _repair_function():
    """``sinder.repair``'s quick repair for smoke runs, if this checkout has one (else None)."""
    try:
        import sinder.repair as repair
    except ModuleNotFoundError as err:
        if err.name in ("sinder.repair", "sinder"):
            return None
        raise
    for name in ("repair_for_smoke", "smoke_repair"):
        if callable(getattr(repair, name, None)):
            return getattr(repair, name)
    return None


def repaired_twin(spec: BackboneSpec, cache_dir: Path, log: Callable[[str], None] = print) -> BackboneSpec | None:
    """A spec for the repaired twin of ``spec``, its weights written once into ``cache_dir/backbones``.

    The repair is cached by the base weights' sha256 so a resumed run needs no repair to know the twin's sha.
    Returns None (with a note) when ``sinder.repair`` offers no smoke repair in this checkout.
    """
    import json
    from dataclasses import asdict

    from sinder.weights import save_state_dict

    repair = _repair_function()
    if repair is None:
        log("note: sinder.repair.repair_for_smoke is not in this checkout: the repaired twin is skipped")
        return None
    base = load(spec)
    # Keyed by the base's content hash only: the label is a display name.
    path = Path(cache_dir) / "backbones" / f"{Path(spec.name).stem}{REPAIRED_SUFFIX}-{base.weights_sha256[:16]}.safetensors"
    if not path.is_file():
        log(f"repairing {spec.label} for the smoke run (cached at {path})")
        repaired = repair(copy.deepcopy(base))
        model = repaired[0] if isinstance(repaired, tuple) else repaired
        path.parent.mkdir(parents=True, exist_ok=True)
        # The metadata a repaired checkpoint carries: its role (a SINDER repair of this base) is read from it.
        metadata = {"base_sha256": base.weights_sha256, "sinder_config": json.dumps(_smoke_repair_config(asdict))}
        save_state_dict(model.state_dict(), path, force=True, metadata=metadata)
    return BackboneSpec(
        text=f"{spec.label}{REPAIRED_SUFFIX}={spec.name}:{path}", name=spec.name, weights=str(path),
        label=f"{spec.label}{REPAIRED_SUFFIX}",
    )  # fmt: skip


def _smoke_repair_config(asdict) -> dict:
    try:
        from sinder.repair import SMOKE_CONFIG, RepairConfig

        return asdict(RepairConfig(**SMOKE_CONFIG))
    except (ImportError, TypeError):
        return {"profile": "smoke"}
