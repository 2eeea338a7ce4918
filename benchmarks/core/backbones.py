"""Backbone specs of ``sinder-bench run --backbone``: parse, check up front, load, and the smoke defaults.

A spec is ``[LABEL=]NAME[:WEIGHTS][+REMEDY[:ARGS]]``: NAME is a preset, a constructed (tiny) backbone, a config file or a
checkpoint that carries its architecture (a Hugging Face DINOv2 folder, an official or timm weights file);
WEIGHTS an optional weights file (any of those formats); LABEL the name shown in records and tables (default:
the weights file's stem, else NAME; with a remedy, ``BASE+REMEDY``); REMEDY the name of a remedy registered in
``benchmarks.core.remedy`` (one module each in ``benchmarks/remedies/``), applied to the base with its ARGS.
Examples: ``dinov2_vitg14``, ``repaired=dinov2_vitg14:ckpt/repaired_vitg14.safetensors``,
``LABEL=dinov2_vitg14+REMEDY:ARGS`` (README.md lists the remedies with an example each).
The label only displays: runs are identified by the weights' content hash and role (``identity.py``).
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

# The trained stand-in (sinder.models.standin): trained features, artifacts planted by their mechanism.
SMOKE_BACKBONE = "dinov2_tiny_standin"
REPAIRED_SUFFIX = "_sinder"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    text: str
    name: str
    weights: str | None
    label: str
    remedy: str | None = None
    remedy_args: str | None = None
    remedy_params: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def base(self) -> BackboneSpec:
        """The spec without its remedy."""
        return replace(self, remedy=None, remedy_args=None, remedy_params={})

    def as_record(self, sha256: str, source: str = "", role: dict | None = None) -> dict:
        out = {"spec": self.text, "name": self.name, "weights": self.weights, "label": self.label,
               "weights_sha256": sha256, "source": source, "role": dict(role or {"kind": "other"})}  # fmt: skip
        if self.remedy:
            out["remedy"] = {"name": self.remedy, "args": self.remedy_args, "params": dict(self.remedy_params)}
        return out


_REMEDY_PART = re.compile(r"\+([A-Za-z][A-Za-z0-9_-]*)(?=:|$)")


def _split_remedy(text: str, raw: str) -> tuple[str, str | None, str | None]:
    """``NAME[:WEIGHTS]+REMEDY[:ARGS]`` -> (base part, remedy, args); a '+' inside a path is not a remedy."""
    from .remedy import list_remedies

    known = list_remedies()
    for match in _REMEDY_PART.finditer(raw):
        before = raw[: match.start()]
        if match.group(1) in known:
            args = raw[match.end() + 1 :].strip() if raw[match.end() : match.end() + 1] == ":" else None
            return before, match.group(1), (args or None)
        if "/" not in before and "\\" not in before:
            raise ValueError(f"--backbone {text!r}: unknown remedy {match.group(1)!r}; remedies: {', '.join(known)} "
                             "(e.g. dinov2_vitg14+REMEDY:ARGS)")  # fmt: skip
    return raw, None, None


def parse_backbone_spec(text: str) -> BackboneSpec:
    """``[LABEL=]NAME[:WEIGHTS][+REMEDY[:ARGS]]`` -> :class:`BackboneSpec` (ValueError naming the bad spec)."""
    raw = text.strip()
    label = None
    head, eq, rest = raw.partition("=")
    if eq and not any(c in head for c in ":/\\"):  # an '=' inside the weights path is not a label
        label, raw = head.strip(), rest.strip()
        if not re.fullmatch(r"[A-Za-z0-9._+-]+", label or ""):
            raise ValueError(f"--backbone {text!r}: label {label!r} must be letters, digits, '.', '_', '+' or '-'")
    raw, remedy, remedy_args = _split_remedy(text, raw)
    params: dict = {}
    if remedy is not None:
        from .remedy import get_remedy

        try:
            params = get_remedy(remedy).parse_args(remedy_args)
        except ValueError as err:
            usage = get_remedy(remedy).args_help
            raise ValueError(f"--backbone {text!r}: {err}" + (f" (usage: +{remedy}:{usage})" if usage else "")) from None
    from sinder.cli.common import split_backbone  # NAME[:WEIGHTS] or PATH: the grammar of every verb

    name, weights = split_backbone(raw)
    if not name:
        raise ValueError(f"--backbone {text!r}: expected [LABEL=]NAME[:WEIGHTS], e.g. dinov2_vitg14 or "
                         "sinder=dinov2_vitg14:sinder.safetensors")  # fmt: skip
    if label is None:
        label = Path(weights).stem if weights else Path(name).stem
        label = f"{label}+{remedy}" if remedy else label
    return BackboneSpec(text=text, name=name, weights=weights, label=label, remedy=remedy, remedy_args=remedy_args,
                        remedy_params=params)  # fmt: skip


def given_models(models) -> tuple[dict[BackboneSpec, object], list[str]]:
    """Specs for modules passed by label (``run_suite(models=...)``), and why any of them cannot be benchmarked."""
    from sinder.models.backbone import missing_members

    specs, problems = {}, []
    for label, module in models.items():
        if not re.fullmatch(r"[A-Za-z0-9._+-]+", str(label)):
            problems.append(f"model label {label!r}: use letters, digits, '.', '_', '+' or '-'")
            continue
        missing = missing_members(module)
        if missing:
            problems.append(f"model {label!r} ({type(module).__name__}): lacks {', '.join(missing)} of "
                            "sinder.models.backbone.Backbone")  # fmt: skip
            continue
        name = str(module.name)
        specs[BackboneSpec(text=f"{label}=<{type(module).__name__} {name}>", name=name, weights=None, label=label)] = module
    return specs, problems


def backbone_problem(spec: BackboneSpec) -> str | None:
    """Why ``spec`` cannot be loaded (a missing weights file, an unknown name), without building the model."""
    if spec.remedy:
        from .remedy import get_remedy

        problem = get_remedy(spec.remedy).problem(spec.base, spec.remedy_params)
        if problem:
            return f"backbone {spec.text!r}: {problem}"
        if get_remedy(spec.remedy).replaces_weights:  # other weights than the base's: `problem` checked them
            return None
        return backbone_problem(spec.base)
    from sinder.models import weights as W
    from sinder.models.constructed import SYNTHETIC_BACKBONES
    from sinder.models.formats import checkpoint_problem, is_checkpoint_path

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
                config = W.checkpoint_config(spec.name)
                problem = W.check_weights_file(config, spec.name)
                if problem is None and Path(spec.name).is_dir():  # its preprocessor_config.json, if any
                    from sinder.models.backbone import read_preprocessor_config

                    read_preprocessor_config(spec.name, config)
            except (OSError, ValueError) as err:
                problem = str(err)
        return f"backbone {spec.text!r}: {problem}" if problem else None
    if spec.name in SYNTHETIC_BACKBONES:
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
    """The model (eval mode) with ``weights_sha256``, ``weights_role`` and ``remedy_cost``; see
    ``sinder.models.weights.load_backbone`` and ``benchmarks.core.remedy``."""
    from sinder.models.weights import load_backbone

    if spec.remedy:
        from .remedy import get_remedy

        return get_remedy(spec.remedy).load(spec.base, spec.remedy_params, device=device)
    model = load_backbone(spec.name, weights=spec.weights, device=device)
    from .remedy import default_cost

    model.remedy_cost = default_cost(model)
    return model


def smoke_specs() -> list[BackboneSpec]:
    """The smoke profile's default backbone: the trained stand-in with planted artifacts."""
    return [parse_backbone_spec(SMOKE_BACKBONE)]


def smoke_register_release(spec: BackboneSpec) -> list[BackboneSpec]:
    """The register release of a constructed base (``NAME_reg``, suite key ``smoke_register_release``), or
    nothing when none is registered."""
    from sinder.models.constructed import SYNTHETIC_BACKBONES
    from sinder.models.roles import REGISTER_SUFFIX

    name = f"{spec.name}{REGISTER_SUFFIX}"
    return [parse_backbone_spec(name)] if name in SYNTHETIC_BACKBONES and spec.weights is None else []


def repaired_twin(spec: BackboneSpec, cache_dir: Path, log: Callable[[str], None] | None = None) -> BackboneSpec:
    """A spec for the repaired twin of ``spec``, its weights written once into ``cache_dir/backbones``.

    The repair is cached by the base weights' sha256 so a resumed run needs no repair to know the twin's sha.
    """
    import json
    from dataclasses import asdict

    from sinder.models.weights import save_state_dict
    from sinder.repair.smoke import repair_for_smoke

    from .remedy import REPAIR_SECONDS_KEY

    log = log or logger.info

    base = load(spec)
    # Keyed by the base's content hash only: the label is a display name.
    path = Path(cache_dir) / "backbones" / f"{Path(spec.name).stem}{REPAIRED_SUFFIX}-{base.weights_sha256[:16]}.safetensors"
    if not path.is_file():
        log(f"repairing {spec.label} for the smoke run (cached at {path})")
        start = time.perf_counter()
        model = repair_for_smoke(copy.deepcopy(base))
        seconds = time.perf_counter() - start
        path.parent.mkdir(parents=True, exist_ok=True)
        # The metadata a repaired checkpoint carries: its role (a SINDER repair of this base) is read from it.
        metadata = {"base_sha256": base.weights_sha256, "sinder_config": json.dumps(_smoke_repair_config(asdict)),
                    REPAIR_SECONDS_KEY: f"{seconds:.3f}"}  # fmt: skip
        save_state_dict(model.state_dict(), path, force=True, metadata=metadata)
    return BackboneSpec(
        text=f"{spec.label}{REPAIRED_SUFFIX}={spec.name}:{path}", name=spec.name, weights=str(path),
        label=f"{spec.label}{REPAIRED_SUFFIX}",
    )  # fmt: skip


def _smoke_repair_config(asdict) -> dict:
    from sinder.repair.config import SMOKE_CONFIG, RepairConfig

    return asdict(RepairConfig(**SMOKE_CONFIG))


def smoke_remedies(spec: BackboneSpec, names, cache_dir: Path, seed: int = 0,
                   log: Callable[[str], None] | None = None) -> list[BackboneSpec]:  # fmt: skip
    """Specs of ``spec`` with each remedy in ``names`` (suite key ``smoke_remedies``), each remedy's smoke
    arguments made once and cached by the base's content hash (:meth:`Remedy.smoke_args`)."""
    log = log or logger.info
    from .remedy import get_remedy

    out = []
    # the base's own weights file: without it a NAME:WEIGHTS base got its remedies applied to NAME's preset weights
    base_text = f"{spec.name}:{spec.weights}" if spec.weights else spec.name
    for name in names:
        args = get_remedy(name).smoke_args(spec, cache_dir, seed, log)
        out.append(parse_backbone_spec(f"{spec.label}+{name}={base_text}+{name}:{args}"))
    return out
