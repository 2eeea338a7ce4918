"""Task profiles checked against a typed schema (benchmarks.core.task_config.check_schema) at preflight, and
the depth protocol written once (DepthConfig's defaults; the profiles YAML hold only what differs)."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from benchmarks.core.registry import get_task
from benchmarks.core.task_config import check_schema


@dataclass
class _Schema:
    n: int = 1
    lr: float = 0.1
    flag: bool = True
    name: str = "x"
    crop: tuple[int, int] = (2, 3)
    sizes: list[int] = field(default_factory=list)
    limit: int | None = None
    extra: dict = field(default_factory=dict)


@pytest.mark.parametrize(("values", "message"), [
    ({"n": 1.5}, "n=1.5: expected an integer"),
    ({"n": True}, "n=True: expected an integer"),
    ({"lr": "fast"}, "lr='fast': expected a number"),
    ({"flag": 1}, "flag=1: expected true or false"),
    ({"name": 3}, "name=3: expected text"),
    ({"crop": [1, 2, 3]}, "crop=[1, 2, 3]: expected a list of 2"),
    ({"crop": [1, "a"]}, "crop=[1, 'a']: expected a list of integers"),
    ({"sizes": 4}, "sizes=4: expected a list"),
    ({"extra": [1]}, "extra=[1]: expected a mapping"),
    ({"limit": 2.5}, "limit=2.5: expected an integer or null"),
    ({"n": 0}, "n=0: expected >= 1"),
    ({"lr": 2.0}, "lr=2.0: expected >= 0 and <= 1"),
    ({"crop": [0, 5]}, "crop=[0, 5]: expected >= 1"),
])  # fmt: skip
def test_check_schema_names_the_key_and_what_it_should_be(values, message):
    ranges = {"n": (1, None), "lr": (0, 1), "crop": (1, None)}
    with pytest.raises(ValueError) as err:
        check_schema(_Schema, values, "task t", ranges)
    assert str(err.value) == f"task t: {message}"


def test_check_schema_accepts_what_fits():
    check_schema(_Schema, {"n": 3, "lr": 1, "flag": False, "name": "y", "crop": (4, 5), "sizes": [1, 2],
                           "limit": None, "other": object()}, "t", {"n": (1, None)})  # fmt: skip


DEPTH_TASKS = ("depth_nyu_linear1", "depth_nyu_linear4", "depth_nyu_dpt")


def test_no_depth_profile_repeats_a_depthconfig_default():
    from benchmarks.depth.train import DepthConfig

    defaults = DepthConfig.protocol()
    folder = Path(get_task(DEPTH_TASKS[0]).task_dir()) / "profiles"
    files = sorted(folder.rglob("*.yaml"))
    assert len(files) == 7  # 3 tasks x 2 profiles + the shared smoke base
    for path in files:
        for key, value in (yaml.safe_load(path.read_text()) or {}).items():
            assert key not in defaults or value != defaults[key], f"{path}: {key}: {value!r} is DepthConfig's default"


@pytest.mark.parametrize("name", DEPTH_TASKS)
def test_depth_profiles_resolve_to_depthconfig_defaults_under_their_own_values(name):
    from benchmarks.depth.train import DepthConfig

    paper, smoke = get_task(name).config("paper"), get_task(name).config("smoke")
    assert paper == {**DepthConfig.protocol(), "head": name.removeprefix("depth_nyu_")}
    assert DepthConfig.from_dict(paper) == DepthConfig(head=name.removeprefix("depth_nyu_"))
    assert (smoke["crop"], smoke["batch_size"], smoke["max_depth"]) == ([84, 112], 4, 10.0)


@pytest.mark.parametrize(("option", "message"), [
    ("depth_nyu_linear4.iterations=1.5", "task depth_nyu_linear4 (profile smoke): depth config: iterations=1.5: "
                                         "expected an integer"),
    ("depth_nyu_linear4.crop=[84,112,3]", "crop=[84, 112, 3]: expected a list of 2"),
    ("depth_nyu_linear4.loss_group=0", "loss_group=0: expected >= 1"),
    ("depth_nyu_linear4.max_depth=0.0001", "max_depth=0.0001 must exceed min_depth=0.001"),
    ("depth_nyu_linear4.eval_images=-1", "eval_images=-1: expected >= 0"),
])  # fmt: skip
def test_a_bad_depth_value_stops_the_run_before_any_work(tmp_path, capsys, option, message):
    from benchmarks.cli import main

    code = main(["run", "--suite", "depth_nyu_linear4", "--profile", "smoke", "--out", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--cfg-options", option])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cache" / "synth").exists()


@pytest.mark.parametrize(("task", "overrides", "message"), [
    ("imagenet_knn", {"T": 0.0}, "task imagenet_knn (profile smoke): T=0.0: expected a positive number"),
    ("imagenet_knn", {"backend": "faiss"}, "backend='faiss': expected one of auto, torch"),
    ("imagenet_knn", {"ks": [10, 0]}, "ks=[10, 0]: expected >= 1"),
    ("imagenet_linear", {"lrs": [0.1, -1]}, "lrs=[0.1, -1]: expected a positive number"),
    ("imagenet_linear", {"avgpool": [1]}, "avgpool=[1]: expected a list of true/false values"),
    ("imagenet_linear", {"iterations": 2.5}, "iterations=2.5: expected an integer"),
    ("seg_ade20k_linear", {"overrides.lr": -1.0}, "(profile smoke): overrides: lr=-1.0: expected a positive number"),
    ("seg_ade20k_linear", {"overrides.log_level": "LOUD"}, "log_level='LOUD': expected one of DEBUG, INFO, WARNING"),
    ("seg_voc_multiscale", {"overrides.feature_cache": 1}, "overrides: feature_cache=1: expected true or false"),
    ("seg_voc_linear", {"overrides.iterations": 0}, "overrides: iterations=0: expected >= 1"),
    ("seg_voc_linear", {"setting": "dpt"}, "setting='dpt': expected one of linear, multiscale"),
])  # fmt: skip
def test_each_task_checks_its_profile_against_its_schema(task, overrides, message):
    if task.startswith("seg_"):
        pytest.importorskip("mmseg")
    with pytest.raises(ValueError) as err:
        get_task(task).config("smoke", overrides)
    assert message in str(err.value)


def test_every_profile_fits_its_schema():
    from benchmarks.classification.task import KnnProfile, LinearProfile
    from benchmarks.segmentation.config import OVERRIDE_KEYS, SegOverrides

    for name in ("imagenet_knn", "imagenet_linear"):
        for profile in ("paper", "smoke"):
            get_task(name).config(profile)  # raises on a misfit
    # each schema names exactly the keys its task's profile holds
    assert sorted(KnnProfile.__dataclass_fields__) == sorted(get_task("imagenet_knn").config("paper"))
    assert sorted(LinearProfile.__dataclass_fields__) == sorted(get_task("imagenet_linear").config("paper"))
    assert OVERRIDE_KEYS == tuple(SegOverrides.__dataclass_fields__)
