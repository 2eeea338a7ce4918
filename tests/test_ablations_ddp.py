
"""Tables 6-7 under torchrun: rank 0 repairs each row, the other ranks wait for its weights without a
collective (a ViT-g repair outlasts any collective's timeout) and then evaluate the same repaired model; a
failure on rank 0 reaches every rank instead of leaving them waiting."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from ddp_helpers import torchrun

SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from benchmarks.ablations.task import ThresholdAblation
    from benchmarks.core import distributed as D
    from benchmarks.core.runner import TaskContext
    from sinder.models.defective import build_defective_tiny
    from sinder.models.weights import content_sha256

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    out = Path(sys.argv[1])
    report = {}

    calls = []
    def make():
        calls.append(D.rank())
        return {"made_by": D.rank()}
    report["result"] = D.made_by_main_rank(out / "work", make, poll_s=0.05)
    report["calls"] = calls

    def fail():
        raise OSError("disk full")
    try:
        D.made_by_main_rank(out / "work", fail, poll_s=0.05)
    except Exception as err:
        report["error"] = f"{type(err).__name__}: {err}"

    backbone, _ = build_defective_tiny()
    task = ThresholdAblation()
    ctx = TaskContext(profile="smoke", config=task.config("smoke"), datasets={}, device=torch.device("cpu"),
                      work_dir=out / "ablation", progress=False)
    model, config, nonfinite = task._repair(backbone, {"mu": 3.5, "max_iters": 4, "num_images": 4}, ctx, "mu_3.5")
    report["repaired"] = content_sha256(model.state_dict())
    report["base"] = content_sha256(backbone.state_dict())
    report["nonfinite"] = nonfinite
    (out / f"rank{D.rank()}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_rank_zero_repairs_and_every_rank_evaluates_its_weights(tmp_path):
    import copy

    from benchmarks.ablations.task import ThresholdAblation, ablation_config
    from sinder.models.defective import build_defective_tiny
    from sinder.models.weights import content_sha256
    from sinder.repair.smoke import repair_for_smoke

    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    torchrun(str(script), str(tmp_path), timeout=240)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # the work ran once, on rank 0, and both ranks got its result
    assert [r["calls"] for r in ranks] == [[0], []]
    assert [r["result"] for r in ranks] == [{"made_by": 0}, {"made_by": 0}]
    # rank 0's error is raised on rank 0 and reported on rank 1, which does not wait forever
    assert ranks[0]["error"] == "OSError: disk full"
    assert ranks[1]["error"].startswith("RuntimeError: rank 0 failed") and "OSError: disk full" in ranks[1]["error"]
    # both ranks hold rank 0's repaired weights, which are the single-process repair of the row
    backbone, _ = build_defective_tiny()
    config = ablation_config({"mu": 3.5, "max_iters": 4, "num_images": 4}, "smoke", len(backbone.blocks))
    alone = repair_for_smoke(copy.deepcopy(backbone), config=config, seed=0)
    assert ranks[0]["repaired"] == ranks[1]["repaired"] == content_sha256(alone.state_dict()) != ranks[0]["base"]
    assert (tmp_path / "ablation" / "repair-mu_3.5" / "repaired.safetensors").is_file()
    assert ranks[0]["nonfinite"] is ranks[1]["nonfinite"] is None
    assert ThresholdAblation.first_backbone_only


def test_one_process_repairs_in_memory_without_markers(tmp_path):
    from benchmarks.ablations.task import ThresholdAblation
    from benchmarks.core.runner import TaskContext
    from sinder.models.defective import build_defective_tiny

    backbone, _ = build_defective_tiny()
    task = ThresholdAblation()
    ctx = TaskContext(profile="smoke", config=task.config("smoke"), datasets={}, device=torch.device("cpu"),
                      work_dir=tmp_path, progress=False)  # fmt: skip
    model, _, _ = task._repair(backbone, {"mu": 3.5, "max_iters": 4, "num_images": 4}, ctx, "row")
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, backbone.state_dict()[k])]
    assert changed  # it repaired (a copy: the backbone itself is untouched, the next row starts from it)
    assert not list(Path(tmp_path).rglob("*.safetensors")) and not list(Path(tmp_path).rglob(".done-*"))
