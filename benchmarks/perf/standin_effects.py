"""The smoke stand-in's remedy effects over several seeds: does each remedy help the dense tasks, beyond noise?

    python -m benchmarks.perf.standin_effects [--suite remedies] [--seeds 0,1,2] [--jobs auto] [--out results/perf]

Runs ``sinder-bench run --suite SUITE --profile smoke --seed S`` once per seed into one output folder and one
cache (each seed draws its own synthetic twins and probe initialisations; the remedies are made once), then
reads the records. Per remedy (SINDER twin, test-time registers, clamping, the register release) and per column
(ImageNet KNN top-1, ADE20k linear mIoU, NYUd Linear-4 RMSE): the effect (remedy minus base) of every seed, its
mean and sample standard deviation, and whether it has the paper's sign on every seed. Writes
``standin_effects.json`` and ``standin_effects.md`` atomically into --out, and the remedies table (mean ± spread
over the seeds) beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sinder.utils.atomic import atomic_write_text

# the trained weights as shipped (float16, no trigger planted): the stand-in with its artifacts perfectly removed
ORACLE = str(Path(__file__).resolve().parents[2] / "sinder" / "models" / "standin" / "dinov2_tiny_standin.safetensors")
ORACLE = f"dinov2_tiny_standin:{ORACLE}"
COLUMNS = {  # (task, metric): (label, the paper's sign of a remedy's effect: +1 higher is the gain, -1 lower)
    ("imagenet_knn", "top1"): ("ImageNet KNN top-1", 0),  # the paper: within noise
    ("seg_ade20k_linear", "miou"): ("ADE20k linear mIoU", +1),
    ("depth_nyu_linear4", "rmse"): ("NYUd Linear-4 RMSE", -1),
}


def run_seed(suite: str, seed: int, runs: Path, cache: Path, jobs: str, backbones: list[str] | None = None,
             cfg_options: list[str] | None = None) -> dict:
    code = ("import sys; from benchmarks.cli import main; sys.exit(main(['run', '--suite', sys.argv[1], '--profile', "
            "'smoke', '--out', sys.argv[2], '--cache-dir', sys.argv[3], '--seed', sys.argv[4], '--jobs', sys.argv[5], "
            "'--no-progress', *sys.argv[6:]]))")  # fmt: skip
    extra = [arg for spec in backbones or [] for arg in ("--backbone", spec)]
    if cfg_options:
        extra += ["--cfg-options", *cfg_options]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, suite, str(runs), str(cache), str(seed), jobs, *extra],
                          capture_output=True, text=True, env=dict(os.environ))  # fmt: skip
    return {"seed": seed, "exit_code": proc.returncode, "wall_s": round(time.perf_counter() - start, 1),
            "stderr_tail": (proc.stderr + proc.stdout)[-2000:] if proc.returncode else ""}  # fmt: skip


def effects(records: list[dict]) -> dict:
    """Per remedy and column: the per-seed effects over the base, mean, spread and the paper's sign on all."""
    from benchmarks.core.identity import RunIdentity
    from benchmarks.core.remedies_report import remedy_of

    values: dict[tuple[str, str, str], dict[int, float]] = {}
    labels: dict[str, str] = {}
    roles = [RunIdentity.from_record(rec).role for rec in records]
    base_shas = {rec["backbone"]["weights_sha256"] for rec, role in zip(records, roles)
                 if role.kind != "other" and remedy_of(role) == "base"}  # fmt: skip
    for rec, role in zip(records, roles):
        key = (rec["task"], next(iter(m for (t, m) in COLUMNS if t == rec["task"]), ""))
        if key not in COLUMNS or key[1] not in rec.get("metrics", {}):
            continue
        if role.is_remedied and role.base_sha256 not in base_shas:
            continue  # a remedy of the oracle (--oracle runs the suite's remedies on it too): not the base's
        # a backbone passed by --oracle (role "other") is compared with the base under its label
        remedy = rec["backbone"]["label"] if role.kind == "other" else remedy_of(role)
        labels[remedy] = rec["backbone"]["label"]
        values.setdefault((remedy, *key), {})[int(rec["seed"])] = float(rec["metrics"][key[1]])
    out: dict = {}
    for (remedy, task, metric), by_seed in sorted(values.items()):
        if remedy == "base":
            continue
        base = values.get(("base", task, metric), {})
        seeds = sorted(set(by_seed) & set(base))
        if not seeds:
            continue
        diffs = [by_seed[s] - base[s] for s in seeds]
        label, sign = COLUMNS[(task, metric)]
        entry = {"column": label, "seeds": seeds, "effects": [round(d, 4) for d in diffs],
                 "mean": round(statistics.fmean(diffs), 4),
                 "spread": round(statistics.stdev(diffs), 4) if len(diffs) > 1 else None,
                 "base_mean": round(statistics.fmean(base[s] for s in seeds), 4)}  # fmt: skip
        if sign:
            entry["paper_sign_on_every_seed"] = all(d * sign > 0 for d in diffs)
        out.setdefault(remedy, {"label": labels[remedy], "columns": {}})["columns"][label] = entry
    return out


def markdown(result: dict) -> str:
    lines = [f"### Stand-in remedy effects over seeds {result['seeds']} (remedy minus base)", "",
             "Smoke profile: `dinov2_tiny_standin`, a tiny constructed model (trained on a synthetic twin, artifacts "
             "planted by their mechanism), on synthetic data; only the effects compare with the paper.", "",
             "| Remedy | Column | Base (mean) | Effect per seed | Mean ± spread | Paper's sign on every seed |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for remedy, entry in result["effects"].items():
        for label, col in entry["columns"].items():
            spread = f" ± {col['spread']:.3g}" if col["spread"] is not None else ""
            sign = {True: "yes", False: "no"}.get(col.get("paper_sign_on_every_seed"), "(within noise expected)")
            lines.append(f"| {remedy} ({entry['label']}) | {label} | {col['base_mean']:.4g} | "
                         f"{', '.join(f'{d:+.3g}' for d in col['effects'])} | {col['mean']:+.3g}{spread} | {sign} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="remedies")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", default="auto")
    parser.add_argument("--work", type=Path, default=None, help="runs and cache folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("results/perf"))
    parser.add_argument("--oracle", action="store_true", help="also run the stand-in's weights without the trigger")
    parser.add_argument("--skip-runs", action="store_true", help="only read the records already in --work")
    parser.add_argument("--cfg-options", nargs="+", default=None, metavar="TASK.KEY=VALUE",
                        help="passed to every run (e.g. a longer probe schedule); recorded in the result")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="standin-effects-"))
    runs, cache = work / "runs", work / "cache"
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    opts = args.cfg_options
    seed_runs = [] if args.skip_runs else [run_seed(args.suite, s, runs, cache, args.jobs, None, opts) for s in seeds]
    if args.oracle:  # the trained weights without the planted trigger: the most any remedy can recover
        seed_runs += [run_seed(args.suite, s, runs, cache, args.jobs, [f"clean={ORACLE}"], opts) for s in seeds]
    records = [json.loads(p.read_text()) for p in sorted(runs.rglob("*.json")) if p.parent.name != "summaries"]
    records = [r for r in records if isinstance(r, dict) and "task" in r and r.get("metrics") and not r.get("error")]
    result = {"benchmark": "standin_effects", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "suite": args.suite,
              "seeds": seeds, "cfg_options": opts or [], "runs": seed_runs, "wall_s": round(time.perf_counter() - started, 1),
              "load_average_1min_before": round(load_before, 2), "load_average_1min_after": round(os.getloadavg()[0], 2),
              "cores": os.cpu_count(), "effects": effects(records)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "standin_effects.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "standin_effects.md", markdown(result))
    failed = [r for r in seed_runs if r["exit_code"]]
    for run in failed:
        print(f"seed {run['seed']} failed (exit {run['exit_code']}): {run['stderr_tail'].strip()[-500:]}", file=sys.stderr)
    if not records:
        print(f"no records under {runs}: no effects to report", file=sys.stderr)
        return 1
    from benchmarks.core.remedies_report import remedies_frame, render_markdown
    from benchmarks.core.report import aggregate

    atomic_write_text(args.out / "standin_remedies.md", render_markdown(remedies_frame(aggregate(records))))
    print(markdown(result))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
