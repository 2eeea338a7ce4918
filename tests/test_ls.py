"""`sinder-bench ls` lists every section with the titles the registries hold."""

import contextlib
import io

from benchmarks.cli import main
from benchmarks.core.registry import get_suite, get_task
from benchmarks.data import DATASETS


def _ls(*what: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["ls", *what]) == 0
    return out.getvalue()


def test_ls_prints_the_titles_of_tasks_suites_and_datasets():
    text = _ls()
    for section in ("backbones:", "datasets:", "tasks:", "suites:"):
        assert section in text.splitlines()
    knn = next(line for line in text.splitlines() if line.strip().startswith("imagenet_knn "))
    knn_task = get_task("imagenet_knn")
    assert knn.strip().endswith((knn_task.title, f"{knn_task.title} ({knn_task.table})"))
    table1 = next(line for line in text.splitlines() if line.strip().startswith("table1 "))
    suite = get_suite("table1")
    assert suite.title and table1.strip().endswith(f"{suite.title} ({len(suite.tasks)} tasks)")
    assert DATASETS["imagenet"].description in text


def test_ls_one_section():
    text = _ls("tasks")
    assert text.splitlines()[0] == "tasks:" and "backbones:" not in text
