"""The cheap remedies suite of the tests: a temporary suite of the census (and a few more tasks) with the
remedies suite's smoke remedies, run on a chosen stand-in with small census and TTR samples.

Shared by tests/test_remedies.py and tests/test_repair_families.py, which check different stand-ins with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

# Small enough for seconds per backbone, large enough for every remedy to move the census's high-norm tokens.
CENSUS_IMAGES = 16
TTR_IMAGES = 40


def run_cheap_remedies_suite(tmp_path: Path, monkeypatch, backbone: str, tasks: Sequence[str] = ("defect_census",),
                             twin: bool = True):  # fmt: skip
    """``run_suite`` of a suite of ``tasks`` with ``smoke_remedies: [clamp, ttr]`` on the smoke default set to
    ``backbone`` (profile smoke, CPU, into ``tmp_path/runs``); ``twin=False`` leaves the SINDER twin out (its
    repair is tested elsewhere). Returns (the run summary, the records folder)."""
    from benchmarks.census.task import DefectCensus
    from benchmarks.core import backbones as B
    from benchmarks.core import registry
    from benchmarks.core.runner import run_suite
    from benchmarks.remedies import ttr as ttr_remedy

    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "cheap.yaml").write_text(f"smoke_remedies: [clamp, ttr]\ntasks: [{', '.join(tasks)}]\n")
    monkeypatch.setattr(registry, "SUITES_DIR", suites)
    if not twin:
        monkeypatch.setattr(B, "repaired_twin", lambda *args, **kwargs: None)
    monkeypatch.setattr(B, "SMOKE_BACKBONE", backbone)
    monkeypatch.setattr(ttr_remedy, "SMOKE_IMAGES", TTR_IMAGES)
    smoke = DefectCensus().config("smoke", {"n_images": CENSUS_IMAGES})
    monkeypatch.setattr(DefectCensus, "config", lambda self, profile, overrides=None: smoke)
    out = tmp_path / "runs"
    summary = run_suite("cheap", profile="smoke", out=out, cache_dir=tmp_path / "cache", device="cpu",
                        progress=False, log=lambda msg: None)  # fmt: skip
    return summary, out


def census_by_label(out: Path) -> dict[str, dict]:
    """The census records in ``out``, by backbone label."""
    records = (json.loads(path.read_text()) for path in (out / "defect_census").glob("*.json"))
    return {record["backbone"]["label"]: record for record in records}
