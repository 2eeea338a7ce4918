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
