"""SINDER: Algorithm 1 of the paper, end to end, resumable, producing a plain repaired state dict.

Per image: find the first block with at least sigma defects along its singular defect direction (Eq. 5); apply
the neighbour loss (Eq. 8) there; update the singular values of the lambda blocks ending at that block. Stop
when more than ``stop_fraction`` of the last ``window`` images were clear, or when the iteration budget ends.

Engineering choices that do not change the result:
- The forward pass cuts the autograd graph at every block and keeps only the last lambda segments; backward
  chains them. The official code runs every block with gradients and drops those of the earlier blocks
  afterwards: the gradients of the trained blocks are the same, at lambda blocks' activation memory.
- State (singular-value deltas, momentum buffers, the clear-image window, the iteration) is checkpointed
  atomically; the image order is fixed, so a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic import atomic_path, atomic_write_text, temp_prefix
from .defects import DEFAULT_MU, enough_defects, find_defects
from .loss import KERNELS, neighbor_loss
from .svd import TRAINABLE_SETTINGS, fold_back, parametrize_singular_values, singular_value_changes


def _check_type(key: str, value: Any, annotation: str) -> None:
    """Raise a one-line ValueError unless ``value`` fits the field's annotation (as written in the class)."""
    if value is None and "None" in annotation:
        return
    kind = annotation.replace(" | None", "")
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
    }[kind]
    if not ok:
        expected = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}[kind]
        if "None" in annotation:
            expected += " or null"
        raise ValueError(f"config field '{key}': {value!r} ({type(value).__name__}); expected {expected}")


@dataclass
class RepairConfig:
    """Every knob of Algorithm 1. Defaults: the official implementation (see docs/protocols.md)."""

    # data: official resize short side + centre crop at 518, the 30k-image budget cycled in order
    resolution: int = 518
    num_images: int = 30_000
    max_iters: int = 30_000
    # optimiser (Section 5, training setting)
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 0.0
    # detection and loss (Eqs. 5-8, Table 7)
    mu: float = DEFAULT_MU
    sigma: int = 3
    tau: float = 0.1
    kernel: int = 3
    # what trains (Table 6): lambda = limit_layers blocks ending at the loss layer; None = every block
    trainable: str = "singular_values_except_qk"
    limit_layers: int | None = 10
    # stopping: the paper says M = 500, the official code uses a window of 1000
    window: int = 1000
    stop_fraction: float = 0.75
    # where the official code differs from the paper's text (official values by default)
    normalize_by_alpha: bool = True
    include_center: bool = True
    stop_gradient_target: bool = True
    exclude_border: bool = True
    # the official code skips a non-finite step; we stop by default, keeping the last good state
    on_nonfinite: str = "stop"
    # an unreadable training image: skip it with a warning (counted in the report), or stop the run
    on_bad_image: str = "skip"
    # singular defect directions (Section 3)
    n_samples: int = 100_000
    direction_seed: int = 0
    # engineering
    checkpoint_every: int = 500
    grad_checkpointing: bool = False
    tf32: bool = True
    holdout_images: int = 16

    @classmethod
    def paper(cls, **overrides: Any) -> RepairConfig:
        """The paper's text where it differs from the official code."""
        base = dict(window=500, normalize_by_alpha=False, include_center=False, stop_gradient_target=False,
                    exclude_border=False)
        return cls(**{**base, **overrides})

    @classmethod
    def from_mapping(cls, data: dict[str, Any], base: dict[str, Any] | None = None) -> RepairConfig:
        """A config from ``data`` (RepairConfig fields and ``behaviour``) over ``base`` (e.g. a preset's
        defaults); every value's type is checked here, so a bad value fails before any work."""
        data = {**(base or {}), **data}
        behaviour = data.pop("behaviour", "official")
        if behaviour not in {"official", "paper"}:
            raise ValueError(f"config field 'behaviour': {behaviour!r}; expected 'official' or 'paper'")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown repair config key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        for key, value in data.items():
            _check_type(key, value, cls.__annotations__[key])
        data = {k: float(v) if cls.__annotations__[k] == "float" else v for k, v in data.items()}
        config = cls.paper(**data) if behaviour == "paper" else cls(**data)
        config.validate()
        return config

    @staticmethod
    def read_file(path: str | Path) -> dict[str, Any]:
        """The mapping in a YAML config file, or a one-line ValueError naming the file and the problem."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read repair config {path}: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a repair config is a mapping of RepairConfig fields, got {type(data).__name__}")
        return data

    @classmethod
    def from_file(cls, path: str | Path, base: dict[str, Any] | None = None) -> RepairConfig:
        try:
            return cls.from_mapping(cls.read_file(path), base=base)
        except ValueError as err:
            raise ValueError(f"{path}: {err}" if not str(err).startswith(str(path)) else str(err)) from None

    def validate(self) -> None:
        if self.trainable not in TRAINABLE_SETTINGS:
            raise ValueError(f"config field 'trainable': {self.trainable!r}; expected one of {sorted(TRAINABLE_SETTINGS)}")
        for name in ("on_nonfinite", "on_bad_image"):
            if getattr(self, name) not in {"stop", "skip"}:
                raise ValueError(f"config field '{name}': {getattr(self, name)!r}; expected 'stop' or 'skip'")
        if self.limit_layers is not None and self.limit_layers < 1:
            raise ValueError(f"config field 'limit_layers': {self.limit_layers}; expected >= 1, or null for every block")
        if not 0 < self.stop_fraction <= 1:
            raise ValueError(f"config field 'stop_fraction': {self.stop_fraction}; expected a number in (0, 1]")
        if self.kernel not in KERNELS:
            raise ValueError(f"config field 'kernel': {self.kernel}; expected one of {sorted(KERNELS)}")
        for name in ("resolution", "num_images", "window", "n_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field '{name}': {getattr(self, name)}; expected >= 1")
        for name in ("max_iters", "sigma", "checkpoint_every", "holdout_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"config field '{name}': {getattr(self, name)}; expected >= 0")
        for name in ("lr", "mu", "tau"):
            if not getattr(self, name) > 0:
                raise ValueError(f"config field '{name}': {getattr(self, name)}; expected a positive number")

    def behaviour(self) -> str:
        """'official' or 'paper' where every loss/detection switch agrees with one of them, else 'mixed'.

        The stopping window (1000 official, 500 paper) is reported with the other differences instead, since
        short runs shrink it anyway.
        """
        switches = ("normalize_by_alpha", "include_center", "stop_gradient_target", "exclude_border")
        mine = {k: getattr(self, k) for k in switches}
        for name, reference in (("official", RepairConfig()), ("paper", RepairConfig.paper())):
            if mine == {k: getattr(reference, k) for k in switches}:
                return name
        return "mixed"

    def differences_from_official(self) -> dict[str, Any]:
        official = RepairConfig()
        return {k: v for k, v in asdict(self).items() if getattr(official, k) != v}


class NonFiniteLossError(RuntimeError):
    """A NaN or inf loss or gradient with ``on_nonfinite='stop'``: the last good state has been saved."""


# ------------------------------------------------------------------------------------------- one iteration
def patch_grid(model: nn.Module, tokens: Tensor, rows: int, cols: int) -> Tensor:
    """The (rows, cols, D) patch-token grid of a (1, 1+R+N, D) token tensor."""
    return tokens[0, 1 + model.num_register_tokens :].reshape(rows, cols, -1)


@dataclass
class StepResult:
    layer: int | None
    n_defects: int
    loss: float | None
    alpha: float | None
    nonfinite: bool = False


class SinderStep:
    """Algorithm 1, lines 4-11, for one image on a model whose block linears are SVD-parametrized."""

    def __init__(self, model: nn.Module, directions: Sequence[Tensor], config: RepairConfig):
        self.model = model
        self.directions = [d.detach() for d in directions]
        self.config = config

    def _defect_count(self, grid: Tensor, layer: int) -> int:
        cfg = self.config
        return int(find_defects(grid, self.directions[layer].to(grid), cfg.mu, cfg.exclude_border, cfg.kernel).sum())

    def _run_until_defective(self, image: Tensor, keep: int):
        """Run blocks until one has at least max(sigma, 1) defects (the official code moves on when a layer
        has no defect at all, so sigma = 0 behaves as 1).

        Each block runs on a detached copy of its input, so the graph is cut into per-block segments; the
        last ``keep`` segments are kept (older ones are freed as the forward goes on). Returns (layer or None,
        defect count, segments as (input leaf, output) pairs).
        """
        rows, cols = image.shape[-2] // self.model.patch_size, image.shape[-1] // self.model.patch_size
        with torch.no_grad():
            tokens = self.model.prepare_tokens_with_masks(image)
        segments: deque[tuple[Tensor, Tensor]] = deque(maxlen=max(keep, 1))
        with torch.set_grad_enabled(keep > 0):
            for i, block in enumerate(self.model.blocks):
                leaf = tokens.detach().requires_grad_(keep > 0)
                if keep and self.config.grad_checkpointing:
                    out = torch.utils.checkpoint.checkpoint(block, leaf, use_reentrant=False)
                else:
                    out = block(leaf)
                segments.append((leaf, out))
                count = self._defect_count(patch_grid(self.model, out.detach(), rows, cols), i)
                if enough_defects(count, self.config.sigma):
                    return i, count, list(segments)
                tokens = out
        return None, 0, []

    def find_loss_layer(self, image: Tensor) -> tuple[int | None, int]:
        """First block with at least max(sigma, 1) Eq. 5 defects and its count (no gradients)."""
        layer, count, _ = self._run_until_defective(image, keep=0)
        return layer, count

    def __call__(self, image: Tensor) -> tuple[StepResult, Tensor | None]:
        """Forward and loss; returns the result and the loss (None if clear) to pass to ``backward``.

        One forward pass: the graph of only the last lambda blocks is alive at any time, which gives the
        gradients of the official step (all blocks under autograd, early gradients dropped) at lambda blocks'
        memory and without running any block twice.
        """
        cfg = self.config
        keep = cfg.limit_layers or len(self.model.blocks)
        layer, _, self._segments = self._run_until_defective(image, keep)
        if layer is None:
            return StepResult(None, 0, None, None), None
        rows, cols = image.shape[-2] // self.model.patch_size, image.shape[-1] // self.model.patch_size
        with torch.enable_grad():
            loss, mask, _, alpha = neighbor_loss(
                patch_grid(self.model, self._segments[-1][1], rows, cols),
                self.directions[layer].to(image),
                mu=cfg.mu,
                tau=cfg.tau,
                kernel=cfg.kernel,
                normalize_by_alpha=cfg.normalize_by_alpha,
                include_center=cfg.include_center,
                stop_gradient=cfg.stop_gradient_target,
                exclude_border=cfg.exclude_border,
            )
        value = float(loss.detach()) if loss is not None else None
        finite = value is not None and bool(torch.isfinite(loss.detach()))
        return StepResult(layer, int(mask.sum()), value, float(alpha), nonfinite=not finite), loss

    def backward(self, loss: Tensor) -> None:
        """Backpropagate ``loss`` through the kept segments, last block first, chaining input gradients."""
        grad = None
        for leaf, out in reversed(self._segments):
            if grad is None:
                loss.backward()
            else:
                out.backward(grad)
            grad = leaf.grad
        self._segments = []


# ------------------------------------------------------------------------------------------- state on disk
def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _files_digest(files: Sequence[Path]) -> str:
    return hashlib.sha256("\n".join(str(f) for f in files).encode()).hexdigest()


def _peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


@dataclass
class RepairResult:
    state_dict: dict[str, Tensor]
    iterations: int
    iterations_with_loss: int
    stop_reason: str
    clear_fraction: float
    wall_time_s: float
    peak_memory_bytes: int
    sv_changes: dict[str, Tensor]
    log: list[dict[str, Any]]
    nonfinite_steps: int = 0
    bad_images: list[str] = dataclasses.field(default_factory=list)  # unreadable images skipped
    segments: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one per start or resume


class RepairRun:
    """Algorithm 1 over a list of images with checkpoints, a JSONL log and resume.

    ``load`` turns an image path into a (3, R, R) tensor; ``work_dir`` holds ``checkpoint.pt`` and ``log.jsonl``.
    """

    def __init__(
        self,
        model: nn.Module,
        images: Sequence[Path],
        config: RepairConfig,
        work_dir: str | Path,
        load: Callable[[Path], Tensor],
        directions: Sequence[Tensor] | None = None,
        device: str | torch.device = "cpu",
        progress: bool = True,
        crash_at: int | None = None,
    ):
        config.validate()
        self.config = config
        self.device = torch.device(device)
        self.images = list(images)
        if not self.images:
            raise ValueError("no training images for the repair")
        self.load = load
        self.work_dir = Path(work_dir)
        self.progress = progress
        self.crash_at = crash_at  # tests: simulate a kill after this many iterations
        self.base_sha256 = getattr(model, "weights_sha256", None)
        self.model = model.to(self.device).eval()
        if directions is None:
            from .linearize import singular_defect_directions

            directions = singular_defect_directions(model, n_samples=config.n_samples, seed=config.direction_seed)
        self.directions = [d.to(self.device) for d in directions]
        self.original_keys = list(model.state_dict().keys())
        self.trainable_names = parametrize_singular_values(self.model, config.trainable)
        self.model.to(self.device)
        self.params = [p for _, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.step_fn = SinderStep(self.model, self.directions, config)
        self.iteration = 0
        # True = the image produced no loss (clear). The official window starts full of "had a loss".
        self.history: deque[bool] = deque([False] * config.window, maxlen=config.window)
        self.nonfinite_steps = 0
        self.bad_images: list[str] = []
        # Each start or resume: its first iteration, learning rate and wall time (summed for the report).
        self.segments: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.work_dir / "checkpoint.pt"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "log.jsonl"

    # Fields that may change on --resume: the learning rate (the advice after a non-finite stop is to lower it)
    # and the policies for non-finite steps and unreadable images. The segments record each change.
    RESUMABLE_CHANGES = ("lr", "on_nonfinite", "on_bad_image")

    def _identity(self) -> dict[str, Any]:
        config = {k: v for k, v in asdict(self.config).items() if k not in self.RESUMABLE_CHANGES}
        return {"config": config, "base_sha256": self.base_sha256, "images_sha256": _files_digest(self.images)}

    def save_checkpoint(self) -> None:
        named = dict(self.model.named_parameters())
        _atomic_torch_save(
            {
                "iteration": self.iteration,
                "history": torch.tensor(list(self.history), dtype=torch.bool),
                "nonfinite_steps": self.nonfinite_steps,
                "bad_images": json.dumps(self.bad_images),
                "segments": json.dumps(self._closed_segments()),
                "trainable": {n: named[n].detach().cpu() for n in self.trainable_names},
                "optimizer": self.optimizer.state_dict(),
                "identity": json.dumps(self._identity(), sort_keys=True),
            },
            self.checkpoint_path,
        )

    def load_checkpoint(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        saved, current = json.loads(state["identity"]), self._identity()
        if saved != current:
            diff = sorted(k for k in current if saved.get(k) != current[k])
            raise ValueError(
                f"cannot resume from {self.checkpoint_path}: it was made with a different {', '.join(diff)}. "
                "Use the same backbone, images and config, or start afresh in another --work-dir."
            )
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the saved state carries the old learning rate
            group["lr"] = self.config.lr
        self.iteration = int(state["iteration"])
        self.history = deque(state["history"].tolist(), maxlen=self.config.window)
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self.bad_images = json.loads(state.get("bad_images", "[]"))
        self.segments = json.loads(state.get("segments", "[]"))
        return True

    def _closed_segments(self) -> list[dict[str, Any]]:
        """The segments so far, the current one with its wall time up to now."""
        if not self.segments:
            return []
        *done, current = self.segments
        return [*done, {**current, "wall_time_s": round(time.time() - self._segment_started, 3),
                        "end_iteration": self.iteration}]

    def _truncate_log(self, iteration: int) -> None:
        """Drop log lines of iterations after the checkpoint: they will be run again."""
        if not self.log_path.is_file():
            return
        kept = [line for line in self.log_path.read_text().splitlines() if line and json.loads(line)["iter"] < iteration]
        atomic_write_text(self.log_path, "".join(line + "\n" for line in kept))

    # ----------------------------------------------------------------- the loop
    def clear_fraction(self) -> float:
        return sum(self.history) / len(self.history)

    def clear_of_seen(self) -> tuple[int, int]:
        """(clear images, images) among the last ``window`` images actually seen, for the progress bar: the stop
        rule's window starts full of "had a loss" placeholders, which a rate over the window would count."""
        seen = min(self.iteration, len(self.history))
        return sum(list(self.history)[len(self.history) - seen :]), seen

    def _nonfinite(self, what: str) -> bool:
        """Handle a NaN/inf; True when the step must be skipped."""
        if self.config.on_nonfinite == "skip":
            self.nonfinite_steps += 1
            return True
        # Parameters, history and counters are untouched by this step: the checkpoint is the last good state,
        # and a resume runs this iteration again.
        self.save_checkpoint()
        raise NonFiniteLossError(
            f"non-finite {what} at iteration {self.iteration} (image {self.images[self.iteration % len(self.images)]}); "
            f"the last good state is saved in {self.checkpoint_path}. Resume it (--resume) with a lower lr in the "
            "config, or with on_nonfinite: skip to skip such steps as the official code does."
        )

    def _load_or_skip(self, path) -> Tensor | None:
        """The image, or None when it cannot be read and ``on_bad_image`` is skip (warned and counted)."""
        try:
            return self.load(path)
        except (ValueError, OSError) as err:
            if self.config.on_bad_image == "stop":
                raise ValueError(f"{err} (iteration {self.iteration}); set on_bad_image: skip to skip such "
                                 "images, then --resume") from err
            if str(path) not in self.bad_images:
                self.bad_images.append(str(path))
                warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=2)
            return None

    def run(self, resume: bool = False) -> RepairResult:
        from tqdm import tqdm

        cfg = self.config
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_checkpoint()
            # Lines after the checkpoint (all of them when it was killed before the first) are run again.
            self._truncate_log(self.iteration)
        elif self.checkpoint_path.exists():
            raise FileExistsError(
                f"{self.checkpoint_path} exists from an earlier run: pass --resume to continue it, "
                "or use another --work-dir"
            )
        elif self.log_path.exists():
            self.log_path.unlink()
        if cfg.tf32 and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        started = self._segment_started = time.time()
        self.segments.append({"start_iteration": self.iteration, "lr": cfg.lr})
        stop_reason = "max_iters"
        bar = tqdm(total=cfg.max_iters, initial=self.iteration, disable=not self.progress, desc="sinder repair",
                   unit="img", dynamic_ncols=True)
        with open(self.log_path, "a") as log:
            while self.iteration < cfg.max_iters:
                if self.clear_fraction() >= cfg.stop_fraction:
                    stop_reason = "clear"
                    break
                if self.crash_at is not None and self.iteration >= self.crash_at:
                    raise KeyboardInterrupt(f"simulated kill at iteration {self.iteration}")
                path = self.images[self.iteration % len(self.images)]
                image = self._load_or_skip(path)
                if image is None:  # an unreadable image is not an iteration of the algorithm: no history entry
                    entry = {"iter": self.iteration, "image": str(path), "skipped": "unreadable", "layer": None,
                             "loss": None}
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    result, loss = self.step_fn(image.unsqueeze(0).to(self.device))
                    if loss is not None and not (result.nonfinite and self._nonfinite("loss")):
                        self.step_fn.backward(loss)
                        grads_finite = all(torch.isfinite(p.grad).all() for p in self.params if p.grad is not None)
                        if grads_finite or not self._nonfinite("gradient"):
                            self.optimizer.step()
                    self.history.append(loss is None)  # after the step: a non-finite stop leaves it untouched
                    entry = {"iter": self.iteration, "image": str(path), "layer": result.layer,
                             "n_defects": result.n_defects, "loss": result.loss, "alpha": result.alpha,
                             "clear_fraction": round(self.clear_fraction(), 4)}
                entry["time"] = round(time.time() - started, 3)
                log.write(json.dumps(entry) + "\n")
                log.flush()
                self.iteration += 1
                bar.update(1)
                clear, seen = self.clear_of_seen()
                bar.set_postfix(loss="-" if entry["loss"] is None else f"{entry['loss']:.4f}",
                                layer=entry["layer"], clear=f"{clear}/{seen}")
                if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        self.segments = self._closed_segments()
        wall = sum(seg["wall_time_s"] for seg in self.segments)  # every segment of a resumed run
        log_entries = [json.loads(line) for line in self.log_path.read_text().splitlines() if line]
        changes = singular_value_changes(self.model)
        fold_back(self.model)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if list(state) != self.original_keys:
            raise RuntimeError("folded-back state dict keys differ from the input's: this is a bug")
        return RepairResult(
            state_dict=state,
            iterations=self.iteration,
            iterations_with_loss=sum(1 for e in log_entries if e["loss"] is not None),
            stop_reason=stop_reason,
            clear_fraction=self.clear_fraction(),
            wall_time_s=wall,
            peak_memory_bytes=_peak_memory_bytes(self.device),
            sv_changes=changes,
            log=log_entries,
            nonfinite_steps=self.nonfinite_steps,
            bad_images=list(self.bad_images),
            segments=list(self.segments),
        )


# ------------------------------------------------------------------------------------------- preset scale
# Backbones far from ViT-g at 518 px carry their own repair defaults; the official ones use RepairConfig's.
# dinov2_tiny_defective (8 blocks, width 96) is built for 112 px: an 8 x 8 grid whose 6 x 6 interior rarely
# shows 3 defects at once (sigma = 1), lambda = 4 of its 8 blocks, 20k least-squares samples suffice for a
# width of 96, and a window of 50 images since its folders hold about a hundred. At 518 px its defects are
# spread over a 37 x 37 grid with a trigger tuned for 8 x 8 to 16 x 16, and the repair does not converge.
PRESET_REPAIR_DEFAULTS: dict[str, dict[str, Any]] = {
    "dinov2_tiny_defective": dict(resolution=112, sigma=1, limit_layers=4, n_samples=20_000, window=50,
                                  max_iters=300, checkpoint_every=100),
}


def preset_defaults(backbone: str) -> tuple[dict[str, Any], str]:
    """(the repair defaults of ``backbone``, where they come from: 'official' or 'preset <name>')."""
    name = str(backbone)
    if name in PRESET_REPAIR_DEFAULTS:
        return dict(PRESET_REPAIR_DEFAULTS[name]), f"preset {name}"
    return {}, "official"


# ------------------------------------------------------------------------------------------- smoke repair
# The tiny preset's settings on a shorter budget (32 synthetic photographs, 80 iterations).
SMOKE_CONFIG = {**PRESET_REPAIR_DEFAULTS["dinov2_tiny_defective"], "num_images": 32, "max_iters": 80, "window": 20,
                "checkpoint_every": 0, "holdout_images": 0}


def repair_for_smoke(model: nn.Module, config: RepairConfig | None = None, seed: int = 0) -> nn.Module:
    """A short SINDER repair on synthetic photographs, for the smoke suite; returns the repaired model."""
    from .images import resize_center_crop, to_normalized_tensor
    from .synthetic_images import synthetic_photos

    config = config or RepairConfig(**SMOKE_CONFIG)
    photos = synthetic_photos(config.num_images, size=config.resolution + 16, seed=seed)
    tensors = [to_normalized_tensor(resize_center_crop(p, config.resolution)) for p in photos]
    with tempfile.TemporaryDirectory(prefix=temp_prefix("sinder-smoke-repair")) as work_dir:
        run = RepairRun(model, list(range(len(tensors))), config, work_dir, load=tensors.__getitem__,
                        device=next(model.parameters()).device, progress=False)
        result = run.run()
    model.load_state_dict(result.state_dict)
    return model
