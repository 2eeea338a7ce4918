"""The parity fixtures ship with the tests: every one the fixture README lists is present, and a missing one fails."""

import re

import pytest
from conftest import PARITY, parity_path


def test_every_listed_fixture_is_in_the_repository():
    listed = re.findall(r"^\| `([^`]+)` \|", (PARITY / "README.md").read_text(), flags=re.M)
    assert len(listed) >= 7
    for name in listed:
        if name.endswith("/"):
            assert (PARITY / name / "model.safetensors").is_file(), name
        else:
            assert (PARITY / f"{name}.safetensors").is_file() and (PARITY / f"{name}.json").is_file(), name


def test_a_missing_fixture_fails_instead_of_skipping():
    with pytest.raises(pytest.fail.Exception, match="no_such_fixture.safetensors is missing"):
        parity_path("no_such_fixture.safetensors")
