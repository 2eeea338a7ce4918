"""The checkpoint helper (RNG states, fingerprint, interval, safe loading) and the removal of temps that a
killed process left behind."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from benchmarks.core import checkpointing as CK
from sinder.utils.atomic import remove_stale_temps, temp_prefix


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(1).tolist(), random.random()


def test_rng_state_round_trips_every_generator_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # a cached gaussian is part of numpy's state
    CK.save_state(tmp_path / "s.pt", {"rng": CK.rng_state()})
    expected = draws()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    CK.set_rng_state(CK.load_state(tmp_path / "s.pt")["rng"])
    assert draws() == expected


def test_fingerprint_ignores_the_checkpoint_interval_only():
    base = {"lr": 0.1, "stage": {"epochs": 2}}
    assert CK.fingerprint(base, 0) == CK.fingerprint({**base, "checkpoint_every": 7, "checkpoint_every_s": 9}, 0)
    assert CK.fingerprint(base, 0) != CK.fingerprint({**base, "lr": 0.2}, 0)
    assert CK.fingerprint(base, 0) != CK.fingerprint(base, 1)  # e.g. the seed
    assert CK.fingerprint(base, 0) != CK.fingerprint({"lr": 0.1, "stage": {"epochs": 3}}, 0)


def test_interval_in_iterations_seconds_and_the_last_iteration(tmp_path, monkeypatch):
    every3 = CK.TrainingCheckpoint(tmp_path, "t", "fp", every=3)
    assert [d for d in range(1, 11) if every3.due(d, 10)] == [3, 6, 9, 10]
    clock = [100.0]
    monkeypatch.setattr(CK.time, "monotonic", lambda: clock[0])
    timed = CK.TrainingCheckpoint(tmp_path, "t", "fp", every_s=60)
    due = []
    for done in range(1, 11):
        clock[0] += 25.0  # 25 s an iteration: a save every third iteration (75 s >= 60 s)
        if timed.due(done, 10):
            timed.save({"step": done})
            due.append(done)
    assert due == [3, 6, 9, 10]
    assert CK.TrainingCheckpoint(tmp_path, "t", "fp").every_s == CK.DEFAULT_EVERY_S  # nothing configured
    assert not CK.TrainingCheckpoint(None, "t", "fp", every=1).due(5, 5)  # no folder: never
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        CK.TrainingCheckpoint(tmp_path, "t", "fp", every=0)


def test_load_refuses_foreign_damaged_and_unsafe_files(tmp_path):
    said = []
    ckpt = CK.TrainingCheckpoint(tmp_path, "t", "fp-a", every=1, log=said.append)
    assert ckpt.load() is None and not said  # nothing yet
    ckpt.save({"step": 3, "w": torch.ones(2)})
    state = ckpt.load()
    assert state["step"] == 3 and torch.equal(state["w"], torch.ones(2)) and state["fingerprint"] == "fp-a"
    small, large = CK.module_signature(torch.nn.Linear(2, 3)), CK.module_signature(torch.nn.Linear(2, 4))
    assert small == CK.module_signature(torch.nn.Linear(2, 3)) != large
    ckpt.save({"step": 4}, small)
    assert ckpt.load(small)["step"] == 4
    assert ckpt.load(large) is None and "differently built model" in said[-1]
    other = CK.TrainingCheckpoint(tmp_path, "t", "fp-b", every=1, log=said.append)
    assert other.load() is None and "another configuration" in said[-1]
    (tmp_path / "t.pt").write_bytes(b"not a checkpoint")
    assert ckpt.load() is None and "unreadable" in said[-1]
    # an arbitrary pickled object: weights_only refuses it rather than running its code
    torch.save({"fingerprint": "fp-a", "obj": Payload()}, tmp_path / "t.pt")
    assert ckpt.load() is None and "unreadable" in said[-1]


class Payload:
    pass


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    live = tmp_path / f"{temp_prefix('features.safetensors')}abc.tmp"
    live.write_text("mine, in progress")
    dead_prefix = temp_prefix("record.json").replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    dead_file = tmp_path / "sub" / f"{dead_prefix}xyz.tmp"
    dead_file.parent.mkdir()
    dead_file.write_text("half")
    dead_dir = tmp_path / f"{dead_prefix}staging"
    (dead_dir / "inner").mkdir(parents=True)
    foreign_old = tmp_path / ".x.tmp-otherhost-123-q.tmp"
    foreign_old.write_text("")
    os.utime(foreign_old, (time.time() - 2 * 86400,) * 2)
    foreign_new = tmp_path / ".y.tmp-otherhost-123-q.tmp"
    foreign_new.write_text("")
    unrelated = [tmp_path / ".hidden.tmp", tmp_path / "x.tmp-h-1-", tmp_path / "plain.pt"]
    for path in unrelated:
        path.write_text("")
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead_file, dead_dir, foreign_old])
    assert live.exists() and foreign_new.exists() and all(p.exists() for p in unrelated)
    assert not dead_file.exists() and not dead_dir.exists() and not foreign_old.exists()


KILLED_WRITER = """
import sys, time
from sinder.utils.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    open(tmp, "w").write("partial")
    print(tmp, flush=True)
    time.sleep(60)
"""


def test_a_write_killed_with_sigkill_leaves_a_temp_that_the_next_run_removes(tmp_path, monkeypatch):
    """kill -9 in the middle of an atomic write; then the suite runner starts (and stops at its preflight)."""
    from benchmarks.core.runner import PreflightError, run_suite

    cache, scratch = tmp_path / "cache", tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(cache / "features" / "f.safetensors")],
                            stdout=subprocess.PIPE, text=True, cwd=os.getcwd())  # fmt: skip
    temp = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.exists(temp) and not (cache / "features" / "f.safetensors").exists()
    in_tmp = scratch / f"{temp_prefix('seg_voc_linear').replace(f'-{os.getpid()}-', f'-{proc.pid}-')}work"
    in_tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    with pytest.raises(PreflightError):
        run_suite("table3", ["/nonexistent/weights.safetensors"], profile="smoke", cache_dir=cache,
                  out=tmp_path / "runs", log=lambda m: None)  # fmt: skip
    assert not os.path.exists(temp) and not in_tmp.exists()
