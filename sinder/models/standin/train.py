"""Train the stand-in's features: ``python -m sinder.models.standin.train --images DIR --out FILE``.

A tiny DINOv2 (:data:`sinder.models.standin.circuit.CONFIG`) learns on the synthetic ImageNet twin's train
split (``sinder-bench data synth --dataset imagenet``; ``--images`` is its ``imagenet/train`` folder, one
sub-folder per class) with two objectives, so that its class token carries the image's class and its patch
tokens carry their own local content:

- class-token classification (cross-entropy over the folder's classes, a linear head);
- MAE-lite: 30% of the patches are replaced by the mask token, and a linear head reconstructs every patch's
  low-frequency content (its 2 x 2 grid of 7 x 7 pixel means per channel) from its final normalised token.

The detector scaffold of :mod:`sinder.models.standin.scaffold` is imposed before training and after every step;
the artifacts are planted later, at load time (:mod:`sinder.models.standin.circuit`). Deterministic: fixed
seeds, one thread, ``torch.use_deterministic_algorithms``. The weights are written as float16 safetensors with
this script's sha256 and its arguments in the metadata (a test checks the shipped files against the script).
Shipped files were made with::

    sinder-bench data synth --dataset imagenet --seed 100 --n-train 24 --out /tmp/twins/imagenet
    python -m sinder.models.standin.train --images /tmp/twins/imagenet/train --out sinder/models/standin/dinov2_tiny_standin.safetensors
    python -m sinder.models.standin.train --images /tmp/twins/imagenet/train --registers 4 --out sinder/models/standin/dinov2_tiny_standin_reg.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from sinder.models.standin import scaffold
from sinder.models.standin.scaffold import CONFIG, REG_CONFIG, impose_scaffold
from sinder.models.vit import build_vit
from sinder.utils.hashing import canonical_sha256, file_sha256
from sinder.utils.images import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)  # ImageNet normalisation, as every loader here
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
IMAGE_EXTS = {".jpeg", ".jpg", ".png"}


def script_sha256() -> str:
    """The sha256 of this script and of the scaffold it trains with (``scaffold.py``): shipped weights record it,
    so changing either without retraining fails a test."""
    return canonical_sha256([file_sha256(Path(__file__)), file_sha256(Path(scaffold.__file__))])


def load_folder(root: Path, short_side: int) -> tuple[Tensor, Tensor]:
    """(uint8 images N x 3 x H x W, int64 labels) of a class-per-folder tree, in sorted order, each resized so
    its short side is ``short_side`` and centre-cropped to the first image's aspect."""
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class folders (expected the ImageNet twin's train split)")
    images, labels = [], []
    size = None
    for label, folder in enumerate(classes):
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS):
            img = Image.open(path).convert("RGB")
            scale = short_side / min(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
            size = size or (img.height, img.width)
            arr = np.asarray(img)[: size[0], : size[1]]
            if arr.shape[:2] != size:
                raise ValueError(f"{path}: size {arr.shape[:2]} after resizing, expected {size}")
            images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def batch(images: Tensor, labels: Tensor, size: int, count: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random batch: random crops of ``size`` and horizontal flips, ImageNet-normalised."""
    idx = torch.randint(len(images), (count,), generator=gen)
    height, width = images.shape[-2:]
    tops = torch.randint(height - size + 1, (count,), generator=gen)
    lefts = torch.randint(width - size + 1, (count,), generator=gen)
    flips = torch.rand(count, generator=gen) < 0.5
    out = []
    for i, t, left, flip in zip(idx.tolist(), tops.tolist(), lefts.tolist(), flips.tolist()):
        crop = images[i, :, t : t + size, left : left + size]
        out.append(crop.flip(-1) if flip else crop)
    x = torch.stack(out).float() / 255.0
    return (x - MEAN) / STD, labels[idx]


def patch_targets(x: Tensor, patch: int) -> Tensor:
    """(B, N, 12): each patch's 2 x 2 grid of half-patch means per channel (its low-frequency content)."""
    pooled = F.avg_pool2d(x, patch // 2)  # B x 3 x 2R x 2C
    b, c, h, w = pooled.shape
    grid = pooled.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(b, (h // 2) * (w // 2), c * 4)


def train(images: Tensor, labels: Tensor, registers: int = 0, steps: int = 600, batch_size: int = 32,
          lr: float = 2e-3, mask_ratio: float = 0.3, seed: int = 0, log=print) -> tuple[nn.Module, dict]:  # fmt: skip
    """The trained model (scaffold imposed, no trigger) and a summary of the run."""
    torch.manual_seed(seed)
    config = REG_CONFIG if registers else CONFIG
    if registers and registers != REG_CONFIG["num_register_tokens"]:
        raise ValueError(f"--registers {registers}: the register release has {REG_CONFIG['num_register_tokens']}")
    model = build_vit(config, seed=seed).train()
    impose_scaffold(model)
    dim, patch, size = model.embed_dim, model.patch_size, config["img_size"]
    head_gen = torch.Generator().manual_seed(seed + 1)
    cls_head = nn.Linear(dim, int(labels.max()) + 1)
    rec_head = nn.Linear(dim, 12)
    for head in (cls_head, rec_head):
        nn.init.normal_(head.weight, std=0.02, generator=head_gen)
        nn.init.zeros_(head.bias)
    frozen = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    frozen |= {id(b.ls1.gamma) for b in model.blocks} | {id(b.ls2.gamma) for b in model.blocks}
    params = [p for p in model.parameters() if id(p) not in frozen]
    decay = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay + [cls_head.weight, rec_head.weight], "weight_decay": 0.05},
                             {"params": other + [cls_head.bias, rec_head.bias], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))  # fmt: skip
    warmup = max(steps // 10, 1)
    gen = torch.Generator().manual_seed(seed + 2)
    n_patches = (size // patch) ** 2
    history = []
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        x, y = batch(images, labels, size, batch_size, gen)
        masks = torch.rand(batch_size, n_patches, generator=gen) < mask_ratio
        out = model.forward_features(x, masks=masks)
        ce = F.cross_entropy(cls_head(out["x_norm_clstoken"]), y)
        rec = F.mse_loss(rec_head(out["x_norm_patchtokens"]), patch_targets(x, patch))
        loss = ce + rec
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        impose_scaffold(model)
        history.append((ce.item(), rec.item()))
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step:4d}  ce {ce.item():.3f}  reconstruction {rec.item():.4f}")
    tail = history[-50:]
    summary = {"final_ce": float(np.mean([h[0] for h in tail])), "final_reconstruction": float(np.mean([h[1] for h in tail]))}
    return model.eval(), summary


def deterministic(threads: int = 1) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinder.models.standin.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, type=Path, help="the ImageNet twin's train folder")
    parser.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    parser.add_argument("--registers", type=int, default=0, help="0, or 4 for the register release")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.images.is_dir():
        print(f"error: --images {args.images} is not a folder (make it with: sinder-bench data synth --dataset imagenet)",
              file=sys.stderr)  # fmt: skip
        return 2
    deterministic()
    images, labels = load_folder(args.images, short_side=128)
    model, summary = train(images, labels, registers=args.registers, steps=args.steps, batch_size=args.batch_size,
                           lr=args.lr, seed=args.seed)  # fmt: skip
    from sinder.models.state_io import save_state_dict

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    arguments = {"registers": args.registers, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                 "seed": args.seed, "images": len(images), "classes": int(labels.max()) + 1}  # fmt: skip
    metadata = {"script_sha256": script_sha256(), "arguments": json.dumps(arguments, sort_keys=True),
                "summary": json.dumps(summary, sort_keys=True)}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(state, args.out, force=True, metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
