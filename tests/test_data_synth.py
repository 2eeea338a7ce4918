"""Synthetic twins: determinism, safe writing, learnable content, and the ``sinder-bench data`` verb."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cli import main
from benchmarks.data import DATASETS, open_dataset
from benchmarks.data.synth import write_synthetic
from benchmarks.data.synth.files import MAT_HEADER

PATCH = 8


def digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name", list(DATASETS))
def test_same_seed_same_bytes_other_seed_other_content(tmp_path, name):
    a = write_synthetic(name, tmp_path / "a", seed=7, n_train=3, n_val=2)
    b = write_synthetic(name, tmp_path / "b", seed=7, n_train=3, n_val=2)
    c = write_synthetic(name, tmp_path / "c", seed=8, n_train=3, n_val=2)
    da, db, dc = digests(a.root), digests(b.root), digests(c.root)
    assert da == db and sorted(da) == sorted(a.files)  # every file on disk was recorded, and nothing else
    changed = [f for f in da if da[f] != dc.get(f)]
    assert len(changed) >= 3 * len(da) // 4  # a new seed redraws (nearly) every file


def test_mat_files_carry_a_fixed_header(tmp_path):
    result = write_synthetic("potsdam", tmp_path / "p", n_train=1, n_val=1)
    mat = next(Path(result.root, f) for f in result.files if f.endswith(".mat"))
    assert mat.read_bytes()[:116] == MAT_HEADER


def test_more_samples_leave_the_first_ones_unchanged(tmp_path):
    small = digests(write_synthetic("ade20k", tmp_path / "s", n_train=2, n_val=1).root)
    large = digests(write_synthetic("ade20k", tmp_path / "l", n_train=4, n_val=1).root)
    assert all(large[f] == small[f] for f in small)


def test_existing_output_needs_overwrite_and_is_replaced_whole(tmp_path):
    out = tmp_path / "voc"
    write_synthetic("voc2012", out, n_train=4, n_val=2)
    stale = out / "VOCdevkit" / "VOC2012" / "stale.txt"
    stale.write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_synthetic("voc2012", out, n_train=2, n_val=2)
    result = write_synthetic("voc2012", out, n_train=2, n_val=2, overwrite=True)
    assert not stale.exists() and len(open_dataset("voc2012", out, "train")) == 2
    assert sorted(digests(out)) == sorted(result.files)
    assert [p.name for p in tmp_path.iterdir()] == ["voc"]  # no staging folder left behind


def test_size_and_counts_are_honoured(tmp_path):
    result = write_synthetic("cityscapes", tmp_path / "c", n_train=2, n_val=1, size=56)
    sample = open_dataset("cityscapes", result.root, "train")[0]
    assert sample["image"].shape == (56, 112, 3)  # height given, the 1:2 aspect kept
    imagenet = write_synthetic("imagenet", tmp_path / "i", n_train=2, n_val=1, size=(40, 48), n_classes=3)
    ds = open_dataset("imagenet", imagenet.root, "train")
    assert len(ds.classes) == 3 and len(ds) == 6 and ds[0][0].size == (48, 40)
    with pytest.raises(ValueError, match="n_classes"):
        write_synthetic("imagenet", tmp_path / "j", n_classes=500)


def patch_features(image: np.ndarray) -> np.ndarray:
    """Mean and std colour of each PATCH x PATCH patch: (n_patches, 6)."""
    h, w = image.shape[0] // PATCH, image.shape[1] // PATCH
    cells = image[: h * PATCH, : w * PATCH].astype(np.float64).reshape(h, PATCH, w, PATCH, 3)
    cells = cells.transpose(0, 2, 1, 3, 4).reshape(h * w, PATCH * PATCH, 3)
    return np.concatenate([cells.mean(1), cells.std(1)], axis=1)


def patch_labels(label: np.ndarray) -> np.ndarray:
    """Majority label of each patch."""
    h, w = label.shape[0] // PATCH, label.shape[1] // PATCH
    cells = (
        label[: h * PATCH, : w * PATCH].reshape(h, PATCH, w, PATCH).transpose(0, 2, 1, 3).reshape(h * w, -1)
    )
    return np.array([np.bincount(c, minlength=256).argmax() for c in cells])


def nearest_class_mean(train_x, train_y, test_x):
    classes = np.unique(train_y)
    means = np.stack([train_x[train_y == c].mean(0) for c in classes])
    return classes[np.argmin(((test_x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]


@pytest.fixture(scope="module")
def learn_twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    return {
        n: write_synthetic(n, root / n, seed=1).root for n in ("ade20k", "voc2012", "cityscapes", "potsdam")
    }


@pytest.mark.parametrize("name", ["ade20k", "voc2012", "cityscapes", "potsdam"])
def test_segmentation_twins_are_learnable_from_colour(learn_twins, name):
    def collect(split):
        ds = open_dataset(name, learn_twins[name], split)
        feats, labels = zip(
            *[
                (patch_features(s["image"]), patch_labels(s["label"]))
                for s in map(ds.__getitem__, range(len(ds)))
            ]
        )
        x, y = np.concatenate(feats), np.concatenate(labels)
        keep = y != DATASETS[name].ignore_index
        return x[keep], y[keep]

    train_x, train_y = collect("train")
    val_x, val_y = collect("val")
    pred = nearest_class_mean(train_x, train_y, val_x)
    present = np.unique(val_y)
    balanced = np.mean([(pred[val_y == c] == c).mean() for c in present])  # mean per-class recall
    chance = 1.0 / len(np.unique(train_y))
    # at least halfway from chance to perfect
    assert balanced > max(0.6, chance + 0.5 * (1 - chance)), (balanced, chance)


def test_imagenet_twin_is_learnable_from_mean_colour(tmp_path):
    root = write_synthetic("imagenet", tmp_path / "i", seed=2, n_train=6, n_val=4).root

    def collect(split):
        ds = open_dataset("imagenet", root, split)
        return np.stack(
            [np.asarray(ds[i][0], np.float64).reshape(-1, 3).mean(0) for i in range(len(ds))]
        ), np.array(ds.targets)

    pred = nearest_class_mean(*collect("train"), (val := collect("val"))[0])
    assert (pred == val[1]).mean() > 0.8  # chance is 0.1


def test_nyud_depth_is_predictable_from_colour_and_row(tmp_path):
    root = write_synthetic("nyud", tmp_path / "n", seed=3).root

    def collect(split):
        xs, ys = [], []
        for s in map((ds := open_dataset("nyud", root, split)).__getitem__, range(len(ds))):
            h, w = s["depth"].shape[0] // PATCH, s["depth"].shape[1] // PATCH
            cells = s["depth"][: h * PATCH, : w * PATCH].reshape(h, PATCH, w, PATCH)
            valid = (cells > 0).all(axis=(1, 3)).reshape(-1)
            rows = np.repeat(np.arange(h) / h, w)
            feats = np.c_[patch_features(s["image"])[:, :3], rows, np.ones_like(rows)]
            xs.append(feats[valid])
            ys.append(np.log(cells.mean(axis=(1, 3)).reshape(-1)[valid]))
        return np.concatenate(xs), np.concatenate(ys)

    train_x, train_y = collect("train")
    val_x, val_y = collect("test")
    coef, *_ = np.linalg.lstsq(train_x, train_y, rcond=None)
    rmse = np.sqrt(np.mean((np.exp(val_x @ coef) - np.exp(val_y)) ** 2))
    baseline = np.sqrt(np.mean((np.exp(train_y.mean()) - np.exp(val_y)) ** 2))
    assert rmse < 0.6 * baseline, (rmse, baseline)


def test_cli_synth_all_then_check(tmp_path, capsys):
    out = tmp_path / "twins"
    assert main(["data", "synth", "--dataset", "all", "--out", str(out), "--seed", "4", "--n-train", "2",
                 "--n-val", "1"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    for name in DATASETS:
        assert f"{name}: " in printed and str(out / name) in printed
        assert (out / name).is_dir()
    assert main(["data", "check", "--dataset", "voc2012", "--root", str(out / "voc2012"), "--deep"]) == 0
    assert "voc2012 trainval: 3 samples ok" in capsys.readouterr().out

    (out / "nyud" / "nyu_test.txt").unlink()
    assert main(["data", "check", "--dataset", "nyud", "--root", str(out / "nyud")]) == 1
    err = capsys.readouterr().err
    assert "nyud:" in err and str(out / "nyud" / "nyu_test.txt") in err
    assert (
        main(["data", "synth", "--dataset", "nyud", "--out", str(out / "nyud")]) == 2
    )  # exists, no --overwrite
    assert "overwrite" in capsys.readouterr().err
