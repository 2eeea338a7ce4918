"""sinder.utils.atomic: the one atomic write (fsync before the rename; an exclusive variant that never replaces)."""

import os

import pytest

from sinder.utils import atomic
from sinder.utils.atomic import atomic_path, atomic_write_text


def test_the_temp_file_reaches_the_disk_before_it_replaces_the_target(tmp_path, monkeypatch):
    target = tmp_path / "a" / "out.json"
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("replace"), replace(a, b))[1])
    atomic_write_text(target, "new")
    assert events == ["fsync", "replace"] and target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # no temp file left


def test_without_replace_an_existing_file_is_kept(tmp_path):
    target = tmp_path / "record.json"
    with atomic_path(target, replace=False) as tmp:
        open(tmp, "w").write("first")
    with pytest.raises(FileExistsError), atomic_path(target, replace=False) as tmp:
        open(tmp, "w").write("second")
    assert target.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        open(tmp, "w").write("partial")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
