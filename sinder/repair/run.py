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
import json
import resource
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sinder.repair.config import RepairConfig
from sinder.repair.step import NonFiniteLossError, SinderStep
from sinder.repair.svd import fold_back, parametrize_singular_values, singular_value_changes
from sinder.utils.atomic import atomic_path, atomic_write_text
from sinder.utils.hashing import text_sha256


# ------------------------------------------------------------------------------------------- state on disk
def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _files_digest(files: Sequence[Path]) -> str:
    return text_sha256("\n".join(str(f) for f in files))


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
        self.base_sha256 = getattr(model, "weights_sha256", None)
        self.model = model.to(self.device).eval()
        if directions is None:
            from sinder.defects.linearize import singular_defect_directions

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
        from sinder.utils.progress import progress

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
        bar = progress(total=cfg.max_iters, initial=self.iteration, enabled=bool(self.progress), leave=True,
                       desc="sinder repair", unit="img", dynamic_ncols=True)
        with open(self.log_path, "a") as log:
            while self.iteration < cfg.max_iters:
                if self.clear_fraction() >= cfg.stop_fraction:
                    stop_reason = "clear"
                    break
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
