"""Table 3 tasks: ImageNet-1K weighted KNN and linear probe on a frozen backbone.

Profiles (``profiles/<task>/{paper,smoke}.yaml``): ``paper`` is the DINOv2 protocol (protocols.md); ``smoke``
shrinks resolution and schedule so the whole table runs in seconds on a CPU with a tiny backbone and the synthetic ImageNet twin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F

from benchmarks.classification.datasets import open_imagenet
from benchmarks.classification.knn import BACKENDS, evaluate_knn
from benchmarks.classification.linear import head_configs, train_linear_probe
from benchmarks.classification.transforms import eval_transform, train_transform
from benchmarks.core.checkpointing import TrainingCheckpoint, fingerprint
from benchmarks.core.distributed import per_rank_batch
from benchmarks.core.features import (
    FeatureSpec,
    compute_dtype_name,
    dataset_fingerprint,
    describe,
    extract_features,
)
from benchmarks.core.padding import center_pad
from benchmarks.core.preprocessing import patch_multiple, pooled_layers, preprocessing_of
from benchmarks.core.registry import Metric, Task, register_task
from benchmarks.core.scalars import scalar_writer
from benchmarks.core.task_config import check_schema

_TOP = (
    Metric("top1", True, "top-1 accuracy (%) of the best setting"),
    Metric("top5", True, "top-5 accuracy (%) of the best setting"),
)


@dataclass
class KnnProfile:
    """What ``imagenet_knn`` reads from its profile: the types and ranges check_schema holds it to."""

    resize: int
    crop: int
    ks: list[int]
    T: float
    batch_size: int
    backend: str
    chunk_size: int
    autocast: str


@dataclass
class LinearProfile:
    """What ``imagenet_linear`` reads from its profile."""

    resize: int
    crop: int
    iterations: int
    batch_size: int  # global
    eval_batch_size: int
    lrs: list[float]
    n_last_blocks: list[int]
    avgpool: list[bool]
    autocast: str


class _ImageNetTask(Task):
    table = "table3"
    metrics = _TOP
    schema: type = object
    ranges: dict[str, Any] = {}

    def datasets_needed(self, profile: str) -> list[str]:
        return ["imagenet:train", "imagenet:val"]

    def config(self, profile: str, overrides=None) -> dict[str, Any]:
        """The profile, each key checked against the task's schema (types and ranges) at preflight."""
        config = super().config(profile, overrides)
        check_schema(self.schema, config, f"task {self.name} (profile {profile})", self.ranges)
        return config


def _pooled_normalized(model, images):
    # The pooled feature (class token, or the attention pool's output) after the final norm, L2-normalised:
    # DINOv2's KNN feature for a class-token model. A crop the patch size does not divide is center-padded.
    images, _ = center_pad(images, int(model.patch_size))
    (_, pooled), = pooled_layers(model, images, n=1, norm=True)
    return F.normalize(pooled.float(), dim=-1, p=2)


def padding_record(crop: int, patch_size: int) -> dict[str, str]:
    """The record's note when the crop is not a multiple of the patch size (inputs center-padded), else none."""
    if crop % patch_size == 0:
        return {}
    padded = patch_multiple(crop, patch_size)
    return {"input_padding": f"{crop} px crops center-padded to {padded} (patch {patch_size})"}


@register_task
class ImageNetKNN(_ImageNetTask):
    name = "imagenet_knn"
    title = "ImageNet-1K weighted KNN (cosine, T=0.07, k in 10/20/100/200)"
    schema = KnnProfile
    ranges = {"resize": (1, None), "crop": (1, None), "ks": (1, None), "T": "positive", "batch_size": (1, None),
              "backend": BACKENDS, "chunk_size": (1, None)}  # fmt: skip

    def run(self, backbone, ctx) -> dict[str, Any]:
        cfg = ctx.config
        pre = preprocessing_of(backbone)
        transform = eval_transform(cfg["resize"], cfg["crop"], mean=pre.mean, std=pre.std)
        root = ctx.dataset_root("imagenet")
        features = {}
        for split in ("train", "val"):
            dataset = open_imagenet(root, split, transform)
            spec = FeatureSpec(
                weights_sha256=ctx.weights_sha256,
                dataset=f"imagenet:{dataset_fingerprint(dataset)}",
                transform=describe(transform),
                resolution=str(cfg["crop"]),
                layers="cls@last,norm,l2" if pre.pooling == "cls" else f"{pre.pooling}-pool@last,norm,l2",
                dtype=compute_dtype_name(ctx.device, ctx.amp_dtype),
            )
            features[split] = extract_features(
                backbone, dataset, _pooled_normalized, spec=spec, cache_dir=ctx.feature_cache,
                batch_size=cfg["batch_size"], num_workers=ctx.num_workers, device=ctx.device,
                amp_dtype=ctx.amp_dtype, progress=ctx.progress, desc=f"knn {split} features",
            )  # fmt: skip
            if split == "train":
                num_classes = len(dataset.classes) or int(features[split]["labels"].max()) + 1
        train, val = features["train"], features["val"]
        ks = [k for k in cfg["ks"] if k <= len(train["labels"])]
        if not ks:
            raise ValueError(f"train split has {len(train['labels'])} images, fewer than every k in {cfg['ks']}")
        if len(ks) < len(cfg["ks"]):
            ctx.log(f"imagenet_knn: dropped k > {len(train['labels'])} train images: using ks={ks}")
        result = evaluate_knn(
            # Train features stay on the CPU: the search moves only this rank's shard to the device.
            train["features"], train["labels"], val["features"].to(ctx.device), val["labels"],
            ks=ks, T=cfg["T"], num_classes=num_classes, backend=cfg["backend"], chunk_size=cfg["chunk_size"],
        )  # fmt: skip
        result["hparams"]["pooled_feature"] = pre.pooled_feature
        result["hparams"].update(padding_record(cfg["crop"], pre.patch_size))
        result["hparams"]["n_train"] = len(train["labels"])
        result["hparams"]["n_val"] = len(val["labels"])
        return result

    def disk_bytes(self, profile, config, backbone, images) -> int:
        """The cached pooled features of both splits: one float32 row of the token width per image."""
        from benchmarks.core.disk import feature_bytes

        return feature_bytes(images("imagenet:train") + images("imagenet:val"), backbone.embed_dim)


@register_task
class ImageNetLinear(_ImageNetTask):
    name = "imagenet_linear"
    title = "ImageNet-1K linear probe (52 heads: last 1/4 class tokens x avgpool x 13 lrs)"
    schema = LinearProfile
    ranges = {"resize": (1, None), "crop": (1, None), "iterations": (1, None), "batch_size": (1, None),
              "eval_batch_size": (1, None), "lrs": "positive", "n_last_blocks": (1, None),
              "avgpool": "nonempty"}  # fmt: skip

    def run(self, backbone, ctx) -> dict[str, Any]:
        cfg = ctx.config
        root = ctx.dataset_root("imagenet")
        pre = preprocessing_of(backbone)
        train = open_imagenet(root, "train", train_transform(cfg["crop"], mean=pre.mean, std=pre.std))
        val = open_imagenet(root, "val", eval_transform(cfg["resize"], cfg["crop"], mean=pre.mean, std=pre.std))
        batch = per_rank_batch(cfg["batch_size"], ctx.world_size)  # the protocol's batch is global
        checkpoint = TrainingCheckpoint.for_task(ctx, "linear_probe", fingerprint(
            cfg, ctx.seed, ctx.world_size, ctx.weights_sha256, len(train), len(train.classes)))  # fmt: skip
        with scalar_writer(ctx, self.name) as scalars:
            result = train_linear_probe(
                backbone, train, val, num_classes=len(train.classes), iterations=cfg["iterations"],
                batch_size=batch, configs=head_configs(cfg["n_last_blocks"], cfg["avgpool"], cfg["lrs"]),
                device=ctx.device, seed=ctx.seed, num_workers=ctx.num_workers, eval_batch_size=cfg["eval_batch_size"],
                amp_dtype=ctx.amp_dtype, progress=ctx.progress, checkpoint=checkpoint, scalars=scalars,
            )  # fmt: skip
        heads = result.pop("heads")
        result["hparams"]["n_heads"] = len(heads)
        result["hparams"]["pooled_feature"] = pre.pooled_feature
        result["hparams"].update(padding_record(cfg["crop"], pre.patch_size))
        result["details"] = {"heads": heads}  # every head's accuracy, kept in the run record
        return result

    def disk_bytes(self, profile, config, backbone, images) -> int:
        """The training checkpoint: every head's weights and SGD momentum (ImageNet's classes)."""
        from benchmarks.core.disk import checkpoint_bytes
        from benchmarks.data import DATASETS

        classes = int(DATASETS["imagenet"].n_classes or 1000)
        heads = head_configs(config["n_last_blocks"], config["avgpool"], config["lrs"])
        dims = [backbone.embed_dim * (h.n_last_blocks + int(h.avgpool)) for h in heads]
        return checkpoint_bytes(sum((d + 1) * classes for d in dims), slots=2)
