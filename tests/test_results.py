import dataclasses
import json
import os

import pytest

from benchmarks.core import results as R
from benchmarks.core.identity import RunIdentity
from sinder.utils.atomic import _umask


def _record(task="imagenet_knn", sha="ab" * 32, profile="smoke", label="tiny", **metrics):
    return R.make_record(
        task=task, profile=profile, backbone={"label": label, "weights_sha256": sha, "spec": label},
        metrics=metrics or {"top1": 50.0, "top5": 80.0}, metric_directions={"top1": "higher", "top5": "higher"},
        hparams={"k": 10, "ks": (10, 20)}, config={"T": 0.07}, seed=0, wall_time_s=1.5,
        device=R.device_info("cpu"), table="table3", suite="table3",
    )  # fmt: skip


def test_record_has_full_provenance():
    rec = _record()
    for key in ("git_commit", "packages", "device", "seed", "wall_time_s", "config", "hparams", "profile"):
        assert key in rec
    assert rec["packages"]["torch"] and rec["packages"]["python"]
    assert rec["hparams"]["ks"] == [10, 20]  # tuples become JSON lists
    assert rec["device"]["type"] == "cpu"
    json.dumps(rec)  # serialisable as is


def test_validation_names_every_problem():
    rec = _record()
    del rec["seed"]
    rec["metrics"]["top1"] = "high"
    rec["backbone"]["weights_sha256"] = ""
    with pytest.raises(R.RecordError) as err:
        R.validate_record(rec, source="x.json")
    message = str(err.value)
    assert "x.json" in message and "'seed'" in message and "top1" in message and "weights_sha256" in message


def test_store_appends_and_never_overwrites(tmp_path):
    store = R.ResultStore(tmp_path)
    first = store.write(_record())
    second = store.write(_record())
    assert first != second and first.is_file() and second.is_file()
    rec = json.loads(first.read_text())
    with pytest.raises(FileExistsError):  # the same record written again cannot replace the file
        R._write_new(first, json.dumps(rec))
    assert json.loads(first.read_text()) == rec
    assert len(store.records()) == 2
    assert (os.stat(first).st_mode & 0o777) == 0o666 & ~_umask()  # not mkstemp's owner-only 0600
    ident = RunIdentity.from_record(rec)
    assert store.is_done(ident)
    assert not store.is_done(dataclasses.replace(ident, profile="paper"))
    assert not store.is_done(dataclasses.replace(ident, backbone_sha256="cd" * 32))
    assert not store.is_done(dataclasses.replace(ident, task="imagenet_linear"))
    assert not store.is_done(dataclasses.replace(ident, seed=1))


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    store = R.ResultStore(tmp_path)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "link", boom)
    with pytest.raises(OSError):
        store.write(_record())
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.tmp"))


def test_load_records_rejects_malformed_files(tmp_path):
    store = R.ResultStore(tmp_path)
    store.write(_record())
    (tmp_path / "imagenet_knn" / "broken.json").write_text("{not json")
    with pytest.raises(R.RecordError, match="broken.json"):
        R.load_records(tmp_path)
    (tmp_path / "imagenet_knn" / "broken.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(R.RecordError, match="schema"):
        R.load_records(tmp_path)


def test_load_records_skips_summaries_and_reports_missing(tmp_path):
    store = R.ResultStore(tmp_path)
    store.write(_record())
    (tmp_path / "summaries").mkdir()
    (tmp_path / "summaries" / "run.json").write_text(json.dumps({"run_id": "x"}))
    assert len(R.load_records(tmp_path)) == 1
    with pytest.raises(R.RecordError, match="no such file"):
        R.load_records(tmp_path / "nope")
    assert R.load_records(tmp_path / "nope", missing_ok=True) == []


def test_config_hash_ignores_the_checkpoint_interval_only():
    from benchmarks.core.identity import config_sha256

    base = {"iterations": 100, "lrs": [0.1, 0.01], "head": {"checkpoint_every": 50}}
    assert config_sha256(base) == config_sha256({**base, "checkpoint_every_s": 60, "head": {}})
    assert config_sha256(base) != config_sha256({**base, "iterations": 101})
