"""The backbone interface: a module that is not our ViT runs through feature extraction and the KNN task."""

import torch
import torch.nn.functional as F
from torch import nn

from sinder.models.backbone import PRETRAINED, Backbone, RepairableBackbone
from sinder.models.vit import PRESETS, build_vit
from sinder.models.weights import load_backbone, official_filename, state_dict_sha256


class ForeignViT(nn.Module):
    """A ViT from torch's own TransformerEncoderLayer, patch 8, no position embedding: nothing of DINOv2's."""

    def __init__(self, dim: int = 32, depth: int = 3, heads: int = 4, patch: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.embed_dim, self.patch_size, self.num_register_tokens = dim, patch, 0
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(dim)
        self.name, self.weights_source = "foreign", "constructed in the test"
        self.weights_sha256 = state_dict_sha256(self.state_dict())

    def get_intermediate_layers(self, x, n=1, reshape=False, return_class_token=False, norm=True):
        batch, _, height, width = x.shape
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(batch, -1, -1), tokens], dim=1)
        take = set(range(len(self.blocks) - n, len(self.blocks))) if isinstance(n, int) else set(n)
        outs = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in take:
                outs.append(self.final_norm(tokens) if norm else tokens)
        cls = [o[:, 0] for o in outs]
        patches = [o[:, 1:] for o in outs]
        if reshape:
            grid = (height // self.patch_size, width // self.patch_size)
            patches = [p.reshape(batch, *grid, -1).permute(0, 3, 1, 2) for p in patches]
        return tuple(zip(patches, cls)) if return_class_token else tuple(patches)

    def final_cls(self, x):
        """The class token after the last block and the final norm, computed without get_intermediate_layers."""
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.proj(x).flatten(2).transpose(1, 2)], 1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.final_norm(tokens)[:, 0]


def test_protocols_name_what_tasks_and_repair_read():
    foreign = ForeignViT()
    assert isinstance(foreign, Backbone)
    assert not isinstance(foreign, RepairableBackbone)  # no token pipeline: the repair cannot run on it
    loaded = load_backbone("dinov2_tiny_random")
    assert isinstance(loaded, Backbone) and isinstance(loaded, RepairableBackbone)
    assert not isinstance(build_vit("dinov2_tiny"), Backbone)  # built, not loaded: no weights identity


def test_presets_pretrained_config_drives_where_weights_are_found_and_what_they_are(tmp_path, monkeypatch):
    # The file name is what the resolver looks for in torch.hub's folder and what makes a file a release.
    from sinder.models.weights import resolve_weights_path, weights_role

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = PRETRAINED["dinov2_vitg14_reg"]
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / cfg.file).write_bytes(b"")
    assert resolve_weights_path("dinov2_vitg14_reg") == hub / cfg.file
    assert weights_role(hub / cfg.file, "dinov2_vitg14_reg") == {"kind": "register", "name": "dinov2_vitg14_reg"}
    assert weights_role(hub / cfg.file, "dinov2_vitg14")["kind"] == "other"  # another preset's file
    assert cfg.url.endswith(f"/dinov2_vitg14/{cfg.file}")  # the hub's folder per architecture
    assert set(PRETRAINED) == set(PRESETS)
    assert PRETRAINED["dinov2_tiny"].file is None and official_filename("dinov2_tiny") is None


def test_presets_normalise_images_with_their_pretrained_statistics():
    # What the repair and the analysis feed the model: (pixel / 255 - mean) / std with the preset's statistics,
    # which are ImageNet's published ones (Krizhevsky et al.; torchvision's docs) for DINOv2.
    from PIL import Image as PILImage

    from sinder.utils.images import to_normalized_tensor

    cfg = PRETRAINED["dinov2_vitg14"]
    assert cfg.input_size == (3, 518, 518) and cfg.patch_size == 14
    rgb = (200, 100, 30)
    tensor = to_normalized_tensor(PILImage.new("RGB", (4, 4), rgb))
    published = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for c in range(3):
        expected = (rgb[c] / 255 - published[0][c]) / published[1][c]
        assert abs(tensor[c].mean().item() - expected) < 1e-5
        assert abs((rgb[c] / 255 - cfg.mean[c]) / cfg.std[c] - expected) < 1e-9


def _independent_knn_top1(foreign, imagenet_root, config, metrics):
    """Assert ``metrics`` hold the top-1 of a weighted KNN on ``foreign``'s own class tokens; returns the
    (normalized class tokens, labels) per split."""
    from benchmarks.classification.datasets import open_imagenet
    from benchmarks.classification.transforms import eval_transform
    from sinder.utils.images import IMAGENET_MEAN, IMAGENET_STD

    transform = eval_transform(config["resize"], config["crop"], mean=IMAGENET_MEAN, std=IMAGENET_STD)
    feats = {}
    for split in ("train", "val"):
        data = open_imagenet(imagenet_root, split, transform)
        images = torch.stack([data[i][0] for i in range(len(data))])
        labels = torch.tensor([data[i][1] for i in range(len(data))])
        with torch.no_grad():
            feats[split] = (F.normalize(foreign.final_cls(images), dim=-1), labels)
    (train, train_y), (val, val_y) = feats["train"], feats["val"]
    ks = config["ks"]
    sims, idx = (val @ train.T).topk(max(ks), dim=1)
    n_classes = int(train_y.max()) + 1
    for k in ks:
        votes = torch.zeros(len(val), n_classes).scatter_add_(1, train_y[idx[:, :k]], (sims[:, :k] / 0.07).exp())
        top1 = (votes.argmax(1) == val_y).float().mean().item() * 100
        assert abs(metrics[f"k{k}_top1"] - top1) < 1e-3, (k, metrics, top1)
    return feats


def test_foreign_backbone_runs_the_knn_task(tmp_path):
    from benchmarks.classification.task import ImageNetKNN
    from benchmarks.core.runner import TaskContext, prepare_datasets

    task = ImageNetKNN()
    roots, problems = prepare_datasets([task], "smoke", None, tmp_path / "cache", seed=0)
    assert not problems
    foreign = ForeignViT().eval()
    config = {**task.config("smoke"), "ks": [5, 10]}
    ctx = TaskContext(profile="smoke", config=config, datasets=roots, device=torch.device("cpu"),
                      feature_cache=tmp_path / "features", progress=False, weights_sha256=foreign.weights_sha256,
                      backbone_label=foreign.name, log=lambda msg: None)  # fmt: skip
    result = task.run(foreign, ctx)

    # An independent weighted KNN on the foreign model's own class tokens gives the same top-1.
    feats = _independent_knn_top1(foreign, roots["imagenet"], config, result["metrics"])
    # The task's features (cached under the foreign backbone's identity) are the model's own class tokens.
    from safetensors.torch import load_file

    cached = [load_file(str(f)) for f in sorted((tmp_path / "features").rglob("*.safetensors"))]
    assert len(cached) == 2
    for features, labels in feats.values():
        match = [c for c in cached if c["features"].shape == features.shape and torch.equal(c["labels"], labels)]
        assert match and torch.allclose(match[0]["features"], features, atol=1e-5), "cached features differ"


def test_the_runner_benchmarks_a_foreign_module_through_the_smoke_suite(tmp_path):
    import json

    import pytest

    from benchmarks.core.registry import get_task
    from benchmarks.core.runner import PreflightError, prepare_datasets, run_suite

    foreign = ForeignViT().eval()
    out, cache = tmp_path / "runs", tmp_path / "cache"
    summary = run_suite("imagenet_knn", profile="smoke", models={"alien": foreign}, out=out, cache_dir=cache,
                        device="cpu", progress=False, log=lambda msg: None)  # fmt: skip
    assert summary.exit_code == 0 and [e["backbone"] for e in summary.ran] == ["alien"]  # no smoke defaults
    (path,) = (out / "imagenet_knn").glob("*.json")
    record = json.loads(path.read_text())
    assert record["backbone"]["label"] == "alien" and record["backbone"]["name"] == "foreign"
    assert record["backbone"]["weights_sha256"] == foreign.weights_sha256
    config = get_task("imagenet_knn").config("smoke")
    assert record["config"] == config
    roots, _ = prepare_datasets([get_task("imagenet_knn")], "smoke", None, cache, seed=0)  # the run's own data
    _independent_knn_top1(foreign, roots["imagenet"], config, record["metrics"])

    with pytest.raises(PreflightError, match=r"model 'lin' \(Linear\): lacks name, weights_sha256, .*get_intermediate_layers"):
        run_suite("imagenet_knn", profile="smoke", models={"lin": nn.Linear(2, 2)}, out=out, cache_dir=cache,
                  device="cpu", progress=False, log=lambda msg: None)  # fmt: skip
