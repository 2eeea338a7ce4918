"""Task profiles as data (benchmarks.core.task_config): the same resolved configs as before, and overrides."""

import json
from pathlib import Path

import pytest

from benchmarks.core.identity import config_sha256
from benchmarks.core.registry import get_task, list_tasks
from benchmarks.core.task_config import apply_overrides, parse_cfg_options, split_by_task

FIXTURE = Path(__file__).parent / "fixtures" / "task_configs.json"


def _canonical(value) -> str:
    # json text keeps 35 and 35.0 apart (dict equality would not)
    return json.dumps(value, sort_keys=True)


@pytest.mark.parametrize("profile", ["paper", "smoke"])
def test_every_task_resolves_to_the_pinned_config(profile):
    expected = json.loads(FIXTURE.read_text())  # dumped from the code before profiles became YAML
    assert sorted(expected) == sorted(list_tasks())
    for name, by_profile in expected.items():
        assert _canonical(get_task(name).config(profile)) == _canonical(by_profile[profile]), name


def test_smoke_profiles_inherit_what_they_do_not_change_from_paper(tmp_path):
    # Behaviour, not syntax: a key added at the root of a task's paper profile (the file its `_base_` chain
    # starts from) reaches its smoke profile, for every task; a copy of the profile tree is edited so the
    # shipped files stay untouched.
    import shutil

    import yaml

    from benchmarks.core.task_config import PROFILE_DIR, load_task_config, profile_file

    for name in list_tasks():
        task_dir = get_task(name).task_dir()
        copy = tmp_path / name
        shutil.copytree(Path(task_dir) / PROFILE_DIR, copy / PROFILE_DIR)
        paper = profile_file(copy, name, "paper")
        while base := (yaml.safe_load(paper.read_text()) or {}).get("_base_"):
            paper = (paper.parent / base).resolve()
        data = yaml.safe_load(paper.read_text()) or {}
        data["probe_inherited_key"] = 1234
        paper.write_text(yaml.safe_dump(data))
        smoke = load_task_config(copy, name, "smoke", optional=("probe_inherited_key",))
        assert smoke.get("probe_inherited_key") == 1234, name
        # and the smoke profile still changes what it changes
        assert smoke == {**load_task_config(task_dir, name, "smoke"), "probe_inherited_key": 1234}, name


def test_cfg_options_values_are_typed_like_yaml():
    options = parse_cfg_options(["a.lr=1e-4", "b=[10,20]", "c=5,6", "d=null", "e=true", "f=auto", "g=0.5"])
    assert options == {"a.lr": 1e-4, "b": [10, 20], "c": [5, 6], "d": None, "e": True, "f": "auto", "g": 0.5}
    assert isinstance(options["b"][0], int) and isinstance(options["a.lr"], float)
    with pytest.raises(ValueError, match="write KEY=VALUE"):
        parse_cfg_options(["iterations"])
    assert split_by_task({"imagenet_linear.iterations": 3, "x.a.b": 1}) == {
        "imagenet_linear": {"iterations": 3}, "x": {"a.b": 1}}
    with pytest.raises(ValueError, match="name the task first"):
        split_by_task({"iterations": 3})


def test_overrides_set_nested_keys_and_refuse_unknown_keys_and_kinds():
    config = {"lr": 0.1, "stage1": {"epochs": 1}, "crop": [1, 2], "name": "x", "grad_clip": None}
    out = apply_overrides(config, {"lr": 1, "stage1.epochs": 4, "crop": [3, 4], "grad_clip": 2.0,
                                   "checkpoint_every": 10}, where="task t")
    assert out == {"lr": 1, "stage1": {"epochs": 4}, "crop": [3, 4], "name": "x", "grad_clip": 2.0,
                   "checkpoint_every": 10}
    assert config["stage1"] == {"epochs": 1}  # the input is not changed
    with pytest.raises(ValueError, match=r"task t: no config key 'lrr'; keys: crop, grad_clip, lr, name, stage1"):
        apply_overrides(config, {"lrr": 1}, where="task t")
    with pytest.raises(ValueError, match=r"no config key 'stage1.epoch'; keys: stage1.epochs"):
        apply_overrides(config, {"stage1.epoch": 1}, where="task t")
    with pytest.raises(ValueError, match=r"no config key 'lr' \(in lr.x\)"):
        apply_overrides(config, {"lr.x": 1}, where="task t")
    with pytest.raises(ValueError, match=r"lr='fast' is text, the config holds a number"):
        apply_overrides(config, {"lr": "fast"}, where="task t")


def test_task_overrides_reach_the_config_and_its_hash():
    # CAUSE's stage lrs are scaled after the override: the override is of the profile's number
    task = get_task("cause_voc")
    base, changed = task.config("paper"), task.config("paper", {"stage1.batch_size": 32, "stage1.lr": 2e-3})
    assert changed["stage1"]["batch_size_per_process"] == changed["stage1"]["batch_size"] == 32
    assert changed["stage1"]["lr_per_process"] == 2e-3 and changed["stage1"]["lr"] == 2e-3 * 4
    assert base["stage1"]["batch_size_per_process"] == 16
    assert config_sha256(changed) != config_sha256(base)
    with pytest.raises(ValueError, match="task cause_voc: no config key 'stage9'"):
        task.config("smoke", {"stage9.lr": 1.0})
    with pytest.raises(ValueError, match="task imagenet_knn has no profile 'fast'"):
        get_task("imagenet_knn").config("fast")


@pytest.mark.parametrize("option, message", [
    ("imagenet_linera.iterations=2", "suite table3 has no task 'imagenet_linera'; its tasks: imagenet_knn, "
                                     "imagenet_linear"),
    ("imagenet_linear.iteration=2", "task imagenet_linear: no config key 'iteration'"),
    ("imagenet_linear.iterations=many", "iterations='many' is text, the config holds a number"),
])
def test_run_refuses_an_unknown_task_or_key_before_any_work(tmp_path, capsys, option, message):
    from benchmarks.cli import main

    code = main(["run", "--suite", "table3", "--profile", "smoke", "--out", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--cfg-options", option])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))
    assert not (tmp_path / "cache" / "synth").exists()  # no synthetic twin written


def test_run_cfg_options_without_equals_is_a_usage_error(capsys):
    from benchmarks.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "--suite", "table3", "--cfg-options", "imagenet_linear.iterations"])
    assert exit_.value.code == 2 and "write KEY=VALUE" in capsys.readouterr().err


def test_a_task_may_declare_keys_its_profiles_need_not_hold():
    # segmentation's paper profile has empty overrides; resolve_config's keys may still be set
    task = get_task("seg_ade20k_linear")
    config = task.config("paper", {"overrides.iterations": 1000, "overrides.lr": 1e-3})
    assert config["overrides"] == {"iterations": 1000, "lr": 1e-3}
    assert task.config("smoke", {"overrides.iterations": 7})["overrides"]["crop"] == 84  # the rest kept
    with pytest.raises(ValueError, match="no config key 'overrides.itrations'"):
        task.config("paper", {"overrides.itrations": 1000})
    with pytest.raises(ValueError, match="no config key 'iterations'"):  # only under overrides
        task.config("paper", {"iterations": 1000})


# Values as mmengine's DictAction (its public argparse action) reads them, where our parser must agree.
DICT_ACTION_CASES = ["1,2,3", "[a, b, c]", "(1, 2)", "[(1, 2, 3), [a, b], c]", "a,", "[]", "null", "None", "1e-4",
                     "010", "auto", "true", "False", "0.5", "[1,[2,3]]", "[x]", "-3", "1_000", "~", "inf", "[null, 2e3]"]


def _yaml_typed(item):
    # what parse_value did on top of DictAction before: each remaining text item typed by YAML
    import yaml

    if isinstance(item, list | tuple):
        return [_yaml_typed(x) for x in item]
    if not isinstance(item, str):
        return item
    loaded = yaml.safe_load(item)
    if isinstance(loaded, str):
        try:
            return float(loaded)
        except ValueError:
            return loaded
    return loaded


@pytest.mark.parametrize("text", DICT_ACTION_CASES)
def test_cfg_options_lists_agree_with_mmengines_dict_action(text):
    import argparse

    from mmengine.config import DictAction

    from benchmarks.core.task_config import parse_value

    parser = argparse.ArgumentParser()
    parser.add_argument("--o", nargs="+", action=DictAction)
    theirs = _yaml_typed(parser.parse_args(["--o", f"k={text}"]).o["k"])
    assert _canonical(parse_value(text)) == _canonical(theirs)


def test_cfg_options_values_without_mmengine():
    from benchmarks.core.task_config import parse_value

    assert parse_value("[(1, 2, 3), [a, b], c]") == [[1, 2, 3], ["a", "b"], "c"]
    assert parse_value("010") == 10 and parse_value("1e-4") == 1e-4 and parse_value("None") is None
    assert parse_value("'a,b'") == "a,b"  # quoted whole: text
    for bad in ("[a", "a]", "[a)", "(1,[2)]"):
        with pytest.raises(ValueError, match="unbalanced brackets"):
            parse_value(bad)
    with pytest.raises(ValueError, match=r"unbalanced brackets in '\[1,2'"):
        parse_cfg_options(["crop=[1,2"])
    import sinder.cli.cfg_options as module

    assert "_parse_iterable" not in Path(module.__file__).read_text()
