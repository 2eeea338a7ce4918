"""Issue 23: random tolerance files never crash the gate: every one ends in exit 0, 1 or 2, and an exit 2 is one
line ``error: ...`` on stderr (a traceback would escape ``main`` and fail the test)."""

import json
import random

import pytest

from benchmarks.cli import main
from benchmarks.core import results as R

KEYS = ["default", "metrics", "top1", "top5", "imagenet_knn/top1", "imagenet_knn/top9", "nope/top1", "abs", "rel",
        "1", "0.5", "~", "<<", "defaults", "", "?"]  # fmt: skip
SCALARS = ["0.5", "1e-3", "1e9", ".inf", "-.inf", ".nan", "-1", "0", "1e400", "9" * 400, "0x1f", "0o7", "010",
           "1_000", "yes", "true", "null", "~", "'0.3'", "abc", "1:30", "2026-12-07", "!!float 1", "!!int x",
           "!!python/object/apply:os.system ['true']", "&a 1", "*a", "*b", "[]", "{}", "[1, 2]", "{abs: 1}",
           "{rel: .nan}", "{abs: -1}", "{abs: 1, rel: 2}", "{typo: 1}", '"\\x00"', "|\n  text", "@", "%", "'"]  # fmt: skip


def _yaml(rng: random.Random, depth: int = 0) -> str:
    lines = []
    for _ in range(rng.randint(0, 4)):
        key = rng.choice(KEYS)
        indent = "  " * depth
        if depth < 2 and rng.random() < 0.35:
            lines.append(f"{indent}{key}:")
            lines.append(_yaml(rng, depth + 1))
        else:
            lines.append(f"{indent}{key}: {rng.choice(SCALARS)}")
    return "\n".join(line for line in lines if line)


def _json(rng: random.Random):
    def value(depth):
        roll = rng.random()
        if depth < 2 and roll < 0.3:
            return {rng.choice(KEYS): value(depth + 1) for _ in range(rng.randint(0, 3))}
        if roll < 0.4:
            return [value(depth + 1) for _ in range(rng.randint(0, 2))] if depth < 2 else []
        return rng.choice([0.5, 1e-3, -1, 0, float("inf"), float("nan"), "0.3", None, True, 10**400, {"abs": 0.1},
                           {"rel": -2}])  # fmt: skip

    text = json.dumps(value(0))
    if rng.random() < 0.2:  # a repeated key, which json.dumps cannot make
        text = '{"default": 0.1, "default": 0.2' + ("}" if rng.random() < 0.7 else "")
    return text


def _mutate(rng: random.Random, text: str) -> bytes:
    data = bytearray(text.encode())
    for _ in range(rng.choice([0, 0, 1, 3])):
        if not data:
            break
        i = rng.randrange(len(data))
        data[i] = rng.randrange(256)
    if rng.random() < 0.05:
        data = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(data)


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    for side, top1 in (("base", 80.0), ("new", 79.0)):
        for task in ("imagenet_knn", "imagenet_linear"):
            R.ResultStore(root / side).write(R.make_record(
                task=task, profile="smoke", backbone={"label": "m", "weights_sha256": "a" * 64},
                metrics={"top1": top1, "top5": 90.0}, metric_directions={"top1": "higher", "top5": "higher"},
                hparams={}, config={}, seed=0, wall_time_s=1.0, device={"type": "cpu"},
            ))  # fmt: skip
    return root / "new", root / "base"


@pytest.mark.parametrize("seed", range(4))
def test_random_tolerance_files_end_in_0_1_or_2(tmp_path, capsys, sides, seed):
    rng = random.Random(seed)
    new, base = sides
    codes = []
    for i in range(60):
        as_json = rng.random() < 0.3
        text = _json(rng) if as_json else _yaml(rng)
        tol = tmp_path / f"tol{i}.{'json' if as_json else 'yaml'}"
        tol.write_bytes(_mutate(rng, text))
        code = main(["compare", "--new", str(new), "--baseline", str(base), "--tolerance", str(tol)])
        out = capsys.readouterr()
        assert code in (0, 1, 2), (tol.read_bytes(), code)
        if code == 2:
            assert out.err.startswith("error: ") and out.err.count("\n") == 1 and not out.out, tol.read_bytes()
        else:
            assert "regression(s) in 4 metric(s)" in out.out, tol.read_bytes()
        codes.append(code)
    assert 2 in codes and {0, 1} & set(codes)  # the generator makes both usable and unusable files
