"""`sinder-bench run --suite table5 --profile smoke`: three records, each head well below the predict-the-mean RMSE.

The floor is recomputed here in numpy from the synthetic NYU files: one constant (the mean valid training
depth) predicted everywhere, RMSE per test image inside the Eigen crop over valid pixels, averaged over
images. A head must reach RMSE <= 0.75 x that floor (a 25% margin): the smoke heads on the tiny backbone land
near 0.4-0.5 x, while a head that learned nothing (or a readout/loss with the wrong sign or scale) sits at or
above it.
"""

import math

import numpy as np
import pytest
from conftest import run_smoke_suite

from benchmarks.data.nyud import NYUDepthV2

# The whole module shares one smoke suite run (about 20 s of setup).
pytestmark = pytest.mark.slow

TASKS = ("depth_nyu_linear1", "depth_nyu_linear4", "depth_nyu_dpt")
MARGIN = 0.75


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("cache")
    code, records = run_smoke_suite("table5", out, cache, TASKS)
    return {"code": code, "records": records}


def mean_baseline_rmse(root) -> float:
    train, test = NYUDepthV2(root, "train"), NYUDepthV2(root, "test")
    values = np.concatenate([train.load(i)["depth"].ravel() for i in range(len(train))])
    mean = values[(values > 1e-3) & (values <= 10)].astype(np.float64).mean()
    rmses = []
    for i in range(len(test)):
        gt = test.load(i)["depth"].astype(np.float64)
        h, w = gt.shape
        crop = np.zeros_like(gt, bool)
        crop[round(45 * h / 480) : round(471 * h / 480), round(41 * w / 640) : round(601 * w / 640)] = True
        valid = crop & (gt > 1e-3) & (gt <= 10)
        if valid.any():
            rmses.append(math.sqrt(((gt[valid] - mean) ** 2).mean()))
    return float(np.mean(rmses))


def test_suite_writes_one_record_per_head(run):
    assert run["code"] == 0
    for task in TASKS:
        record = run["records"][task]
        assert record is not None, f"no record for {task}"
        assert record["table"] == "table5" and record["config"]["max_depth"] == 10.0
        assert record["metric_directions"]["rmse"] == "lower" and record["metric_directions"]["delta1"] == "higher"
        assert record["metric_directions"]["rmse_log"] == "lower" and record["metric_directions"]["sq_rel"] == "lower"
    assert run["records"]["depth_nyu_linear1"]["hparams"]["blocks"] == [7]
    assert run["records"]["depth_nyu_linear4"]["hparams"]["blocks"] == [1, 3, 5, 7]
    assert run["records"]["depth_nyu_dpt"]["hparams"]["blocks"] == [1, 3, 5, 7]


@pytest.mark.parametrize("task", TASKS)
def test_head_beats_the_mean_depth_baseline(run, task):
    record = run["records"][task]
    floor = mean_baseline_rmse(record["datasets"]["nyud"])
    assert record["details"]["mean_depth_baseline"]["rmse"] == pytest.approx(floor, rel=1e-6)
    assert record["metrics"]["rmse"] <= MARGIN * floor, (record["metrics"], floor)
    assert 0 < record["metrics"]["delta1"] <= 1 and record["metrics"]["abs_rel"] > 0
