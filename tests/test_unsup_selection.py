"""Tables 1 and 2 as their reference code runs: STEGO evaluates its best validation checkpoint, CAUSE's paper
profile trains the model the official 4-process scripts save (rank 0's: batch 16, lr 4e-3, a quarter of the set
per epoch; their DDP modules are unwrapped, so the processes never average gradients)."""

import copy
import math

import pytest
import torch

from benchmarks.core.preprocessing import family_preprocessing
from benchmarks.core.registry import get_task
from benchmarks.core.runner import TaskContext
from benchmarks.data import open_dataset
from benchmarks.unsupervised import loop as L
from benchmarks.unsupervised import stego as S
from benchmarks.unsupervised.cause import _schedule, cause_deviations
from benchmarks.unsupervised.data import SegmentationView, parse_crops
from benchmarks.unsupervised.task import _cause_ddp, resolve_config

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std


def test_cause_paper_profile_is_the_official_rank_zero_model():
    cfg = resolve_config("cause", "cityscapes", "paper")
    assert cfg["ddp"] == "reference" and cfg["ddp_processes"] == 4
    for stage in ("stage1", "stage2", "stage3"):
        assert cfg[stage]["batch_size"] == 16 and cfg[stage]["lr"] == pytest.approx(4e-3)
        assert cfg[stage]["batch_size_per_process"] == 16 and cfg[stage]["lr_per_process"] == pytest.approx(1e-3)
    n_items = 2975 * 5  # five-cropped Cityscapes train
    batch, per_epoch, total = _schedule(n_items, cfg["stage3"], cfg)
    # torch's DistributedSampler (drop_last=False): num_samples = ceil(N / num_replicas) per process; the
    # official DataLoader has no drop_last, so len = ceil(num_samples / batch_size): 3719 items, 233 batches
    rank0_items = math.ceil(n_items / 4)
    assert rank0_items == 3719 and (batch, per_epoch, total) == (16, 233, 233 * 5)
    assert _schedule(16 * 4 * 10 + 1, cfg["stage3"], cfg)[1] == 11  # 161 items for rank 0: 10 batches and 1 item
    # an epoch is a random quarter of the set: distinct items, a new quarter each epoch
    small = 64
    first = torch.cat([L.global_batch(small, 4, s, 0, small // 4) for s in range(4)])
    assert len(first) == len(set(first.tolist())) == 16
    second = torch.cat([L.global_batch(small, 4, s, 0, small // 4) for s in range(4, 8)])  # 4 steps an epoch
    assert len(set(second.tolist())) == 16 and set(second.tolist()) != set(first.tolist())
    # the last partial batch is trained on: 18 items in batches of 4 -> 4, 4, 4, 4, 2; then the next epoch
    sizes = [len(L.global_batch(small, 4, s, 0, 18, keep_partial=True)) for s in range(6)]
    assert sizes == [4, 4, 4, 4, 2, 4]
    epoch = torch.cat([L.global_batch(small, 4, s, 0, 18, keep_partial=True) for s in range(5)])
    assert len(set(epoch.tolist())) == 18
    # the paper mode reproduces the official scripts' sampling, on any number of ranks
    assert cause_deviations(cfg, world_size=4) == cause_deviations(cfg, world_size=1) == []
    raw = resolve_config("cause", "voc2012", "smoke")  # smoke reads its numbers as one process
    assert raw["ddp"] == "single" and raw["stage1"]["batch_size"] == 8 and raw["stage1"]["lr"] == pytest.approx(1e-3)
    assert _schedule(100, raw["stage1"], raw)[1] == 13  # ceil(100 / 8): the last batch of 4 is kept
    single = copy.deepcopy(cfg)
    for stage in ("stage1", "stage2", "stage3"):
        single[stage]["batch_size"], single[stage]["lr"] = 16, 1e-3
    single = _cause_ddp({**single, "ddp": "single"})
    assert single["stage2"]["batch_size"] == 16 and single["stage2"]["lr"] == pytest.approx(1e-3)
    assert cause_deviations(single, 1)[0].startswith("ddp=single")
    with pytest.raises(ValueError, match="ddp='eight'"):
        _cause_ddp({**cfg, "ddp": "eight"})


def test_best_checkpoint_keeps_the_first_maximum():
    model = torch.nn.Linear(2, 1)
    best = S.BestCheckpoint()
    for step, score in ((100, 1.0), (200, 7.0), (300, 7.0), (400, 3.0)):
        with torch.no_grad():
            model.bias.fill_(step)
        best.offer(step, score, model)
    assert best.step == 200 and best.model["bias"].item() == 200.0
    assert best.history == [[100, 1.0], [200, 7.0], [300, 7.0], [400, 3.0]]
    assert S.BestCheckpoint(best.state()).step == 200  # survives a checkpoint round trip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from benchmarks.data.synth import write_synthetic
    from sinder.models.weights import load_backbone

    root = tmp_path_factory.mktemp("synth") / "cityscapes"
    write_synthetic("cityscapes", root, seed=0)
    return root, load_backbone("dinov2_tiny_random")


@pytest.mark.parametrize("selection", ["best", "last"])  # today's variants
def test_stego_evaluates_the_checkpoint_with_the_best_validation_score(setup, tmp_path, monkeypatch, selection):
    from benchmarks.unsupervised.tokens import TokenSource, knn_indices

    root, backbone = setup
    task = get_task("stego_cityscapes")
    cfg = {**task.config("smoke"), "train_resolution": 56, "knn_resolution": 56, "steps": 10, "val_every": 2,
           "selection": selection}  # fmt: skip
    cfg["loss"] = cfg["loss_weights"]["dinov2"]
    ctx = TaskContext(profile="smoke", config=cfg, datasets={"cityscapes": root}, device=torch.device("cpu"),
                      feature_cache=tmp_path / "features", progress=False, weights_sha256=backbone.weights_sha256,
                      backbone_label="tiny", log=lambda m: None)  # fmt: skip
    view = SegmentationView(open_dataset("cityscapes", root, "train"), 56, parse_crops([["five", 0.5]]), name="cs",
                            preprocessing=DINOV2)
    source = TokenSource(backbone, view, ctx)
    scores, seen = iter([10.0, 40.0, 20.0, 40.0, 30.0]), {}  # validations at steps 2, 4, 6, 8, 10

    def scripted(model, val, cfg, n_classes):
        seen[len(seen) * 2 + 2] = copy.deepcopy(model.state_dict())
        return next(scores)

    monkeypatch.setattr(S, "validate_cluster_miou", scripted)
    torch.manual_seed(0)
    model = S.StegoModel(source.channels, 27)
    stats = S.train_stego(model, source, knn_indices(backbone, view, ctx, k=8), cfg, ctx, 27, val=source)
    if selection == "last":
        assert stats["selection"] == {"mode": "last"} and not seen  # no validation when evaluating the last step
        return
    assert stats["selection"]["step"] == 4 and stats["selection"]["val_cluster_miou"] == 40.0  # first of the ties
    assert [h[0] for h in stats["selection"]["history"]] == [2, 4, 6, 8, 10]
    state = model.state_dict()
    assert all(torch.equal(value, seen[4][name]) for name, value in state.items())
    assert not all(torch.equal(value, seen[10][name]) for name, value in state.items())  # not the last step


def lightning15_stego_selection(n_items, batch, max_steps, val_freq, every_n_train_steps, top_k, scores):
    """STEGO's checkpoint selection re-stated as the events of its training run, independently of ours.

    Sources: STEGO ``src/train_segmentation.py`` (mhamilton723/STEGO): ``DataLoader(train_dataset, cfg.batch_size,
    shuffle=True)`` (no drop_last); ``gpu_args = dict(..., val_check_interval=cfg.val_freq)``, popped ``if
    gpu_args["val_check_interval"] > len(train_loader) // 4``; ``ModelCheckpoint(every_n_train_steps=400,
    save_top_k=2, monitor="test/cluster/mIoU", mode="max")``; ``validation_epoch_end`` logs its metrics only ``if
    self.global_step > 2``. PyTorch Lightning 1.5: ``TrainingEpochLoop.advance`` calls ``on_train_batch_end``, then
    ``on_advance_end`` validates when ``(batch_idx + 1) % val_check_batch == 0`` and only then increments
    ``global_step``; ``ModelCheckpoint.on_train_batch_end`` saves when ``(global_step + 1) % every_n_train_steps ==
    0``, skipping a monitor not yet logged; ``check_monitor_top_k`` needs ``current > kth value`` (torch.gt) once
    k are kept; ``_update_best_and_save`` pops ``kth_best_model_path`` and sets it to ``min(best_k_models,
    key=best_k_models.get)``; ``best_model_path = max(best_k_models, key=best_k_models.get)``.

    ``scores``: an iterator of the validation scores in the order the validations run. Returns (validations
    [step, score], saved candidates [step, score], kept {step: score}, best step)."""
    num_batches = len(range(0, n_items, batch))
    val_check_batch = num_batches if val_freq > num_batches // 4 else val_freq
    global_step, logged, best_k, kth = 0, {}, {}, None
    validations, candidates = [], []
    while global_step < max_steps:
        for batch_idx in range(num_batches):
            # ModelCheckpoint.on_train_batch_end
            if (global_step + 1) % every_n_train_steps == 0 and "test/cluster/mIoU" in logged:
                current = logged["test/cluster/mIoU"]
                candidates.append([global_step + 1, current])
                if len(best_k) < top_k or current > best_k[kth]:
                    if len(best_k) == top_k:
                        best_k.pop(kth)
                    best_k[global_step + 1] = current
                    if len(best_k) == top_k:
                        kth = min(best_k, key=best_k.get)
            # on_advance_end: validation, then the step count
            if (batch_idx + 1) % val_check_batch == 0:
                score = next(scores)
                validations.append([global_step + 1, score])
                if global_step > 2:
                    logged["test/cluster/mIoU"] = score
            global_step += 1
            if global_step >= max_steps:
                break
    return validations, candidates, best_k, (max(best_k, key=best_k.get) if best_k else None)


def _stego_smoke_run(setup, tmp_path, monkeypatch, scores, **overrides):
    from benchmarks.unsupervised.tokens import TokenSource, knn_indices

    root, backbone = setup
    task = get_task("stego_cityscapes")
    cfg = {**task.config("smoke"), "train_resolution": 56, "knn_resolution": 56, **overrides}
    cfg["loss"] = cfg["loss_weights"]["dinov2"]
    ctx = TaskContext(profile="smoke", config=cfg, datasets={"cityscapes": root}, device=torch.device("cpu"),
                      feature_cache=tmp_path / "features", progress=False, weights_sha256=backbone.weights_sha256,
                      backbone_label="tiny", log=lambda m: None)  # fmt: skip
    view = SegmentationView(open_dataset("cityscapes", root, "train"), 56, parse_crops([["five", 0.5]]), name="cs",
                            preprocessing=DINOV2)
    source = TokenSource(backbone, view, ctx)
    scripted_scores = iter(scores)
    monkeypatch.setattr(S, "validate_cluster_miou", lambda model, val, cfg, n_classes: next(scripted_scores))
    torch.manual_seed(0)
    model = S.StegoModel(source.channels, 27)
    stats = S.train_stego(model, source, knn_indices(backbone, view, ctx, k=8), cfg, ctx, 27, val=source)
    return model, stats, cfg, len(view)


@pytest.mark.parametrize("overrides, scores", [
    # the smoke profile: 120 items in batches of 8 = 15 an epoch; val_freq 100 > 15 // 4, so one validation an
    # epoch (15, 30, ... 90); checkpoints at 20, 40, ... 100 carry the score of 15, 30, 45, 75, 90
    ({}, [10.0, 40.0, 20.0, 40.0, 40.0, 35.0]),
    # val_freq 2 <= 15 // 4: every 2nd batch of each epoch (2, ..., 14, 17, ...); the validation at step 2 is not
    # logged (global_step 1); a checkpoint every 5 steps
    ({"steps": 34, "val_every": 2, "save_every": 5}, [float(x) for x in (9, 1, 5, 5, 7, 2, 7, 3, 8, 7, 1, 4, 6, 6,
                                                                         2, 9, 0, 9, 5)]),
])  # fmt: skip
def test_stego_reference_selection_is_train_segmentation_under_lightning_15(setup, tmp_path, monkeypatch,
                                                                          overrides, scores):  # fmt: skip
    model, stats, cfg, n_items = _stego_smoke_run(setup, tmp_path, monkeypatch, scores, **overrides)
    assert cfg["selection"] == "reference" and cfg["save_top_k"] == 2
    validations, candidates, kept, best = lightning15_stego_selection(
        n_items, cfg["batch_size"], cfg["steps"], cfg["val_every"], cfg["save_every"], cfg["save_top_k"],
        iter(scores))  # fmt: skip
    sel = stats["selection"]
    assert sel["mode"] == "reference"
    assert sel["validations"] == validations  # the same validation steps, each with its score
    assert [[c["step"], c["score"]] for c in sel["candidates"]] == candidates  # saved steps, lagged scores
    assert {k["step"]: k["score"] for k in sel["kept"]} == kept
    assert sel["step"] == best
    if not overrides:  # spelled out: the lag (step 60 carries 45's 20, not its own 40) and the ties
        assert candidates == [[20, 10.0], [40, 40.0], [60, 20.0], [80, 40.0], [100, 35.0]]  # 80 has 75's
        assert kept == {40: 40.0, 80: 40.0} and best == 40
    # the model evaluated is the state after the chosen step: the same run stopped there
    stopped, *_ = _stego_smoke_run(setup, tmp_path, monkeypatch, [], **{**overrides, "steps": best,
                                                                        "selection": "last"})  # fmt: skip
    assert all(torch.equal(v, stopped.state_dict()[k]) for k, v in model.state_dict().items())


def test_stego_paper_profile_precision_and_selection_resolution():
    cfg = resolve_config("stego", "cityscapes", "paper")
    assert cfg["autocast"] == "float32"  # STEGO has no autocast
    assert (cfg["val_every"], cfg["save_every"], cfg["save_top_k"], cfg["val_resolution"]) == (100, 400, 2, 320)
    assert S.selection_resolution(cfg, 14) == 322 and S.selection_resolution(cfg, 16) == 320
    # the paper's Cityscapes: 14,875 five-crops in batches of 16 = 930 an epoch (the last one partial)
    val_steps, save_steps = S.reference_schedule(2975 * 5, 16, 5000, 100, 400)
    assert val_steps[:10] == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1030]
    assert save_steps == list(range(400, 5000, 400)) + [] and len(save_steps) == 12
    always = ["negative pairs drawn by a true derangement (STEGO's super_perm can map two items to one)"]
    devs = S.stego_deviations(cfg, {"mode": "reference"}, 322)
    assert devs == always + ["selection validates at 322: val_resolution 320 is not a multiple of the patch size "
                             "(STEGO validates at a 320 centre crop)"]
    assert S.stego_deviations(cfg, {"mode": "reference"}, 320) == always
    assert S.stego_deviations(cfg, {"mode": "last"}, None)[1].startswith("selection=last")
    short = S.stego_deviations({**cfg, "steps": 300}, {"mode": "reference", "evaluated": "last"}, 320)
    assert short[1] == "selection=reference saved no checkpoint in 300 steps (every 400): the last step is evaluated"


def test_stego_reference_selection_survives_a_resume(setup, tmp_path, monkeypatch):
    """The kept checkpoints, the candidates and the last logged score are part of the resumable state."""
    from benchmarks.unsupervised.tokens import TokenSource, knn_indices

    root, backbone = setup
    task = get_task("stego_cityscapes")
    # a score that depends on the model only, so the resumed run's validations score as the uninterrupted one's
    monkeypatch.setattr(S, "validate_cluster_miou",
                        lambda model, val, cfg, n: round(float(model.head.linear.bias.detach().sum()) * 100, 3) % 7)
    cfg = {**task.config("smoke"), "train_resolution": 56, "knn_resolution": 56, "steps": 20, "val_every": 2,
           "save_every": 5, "checkpoint_every": 4}  # fmt: skip
    cfg["loss"] = cfg["loss_weights"]["dinov2"]
    view = SegmentationView(open_dataset("cityscapes", root, "train"), 56, parse_crops([["five", 0.5]]), name="cs",
                            preprocessing=DINOV2)

    def train(work_dir, die_at_step=None):
        ctx = TaskContext(profile="smoke", config=cfg, datasets={"cityscapes": root}, device=torch.device("cpu"),
                          feature_cache=tmp_path / "features", work_dir=work_dir, progress=False,
                          weights_sha256=backbone.weights_sha256, backbone_label="tiny", log=lambda m: None)  # fmt: skip
        source = TokenSource(backbone, view, ctx)
        if die_at_step is not None:
            calls, real = [0], source.tokens_of

            def flaky(*args, **kwargs):
                calls[0] += 1
                if calls[0] == 2 * die_at_step + 1:
                    raise RuntimeError("killed")
                return real(*args, **kwargs)

            source.tokens_of = flaky
        torch.manual_seed(0)
        model = S.StegoModel(source.channels, 27)
        stats = S.train_stego(model, source, knn_indices(backbone, view, ctx, k=8), cfg, ctx, 27, val=source)
        return model, stats["selection"]

    model, selection = train(tmp_path / "once")
    assert len(selection["candidates"]) >= 3 and len(selection["kept"]) == 2
    with pytest.raises(RuntimeError, match="killed"):
        train(tmp_path / "killed", die_at_step=14)  # after the checkpoint of step 12 (candidates at 5 and 10)
    resumed, resumed_selection = train(tmp_path / "killed")
    assert resumed_selection == selection
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_last_batch_smaller_than_the_ranks_is_dropped_and_recorded(monkeypatch):
    from benchmarks.core import distributed as D

    assert L.partial_batch_dropped(9, 8) is None and L.steps_per_epoch(9, 8, keep_partial=True) == 2
    monkeypatch.setattr(D, "world_size", lambda: 2)
    note = L.partial_batch_dropped(9, 8)  # 1 item for 2 ranks: one rank would have none
    assert note == "each epoch's last batch (1 of 9 items) is dropped: fewer items than the 2 ranks (the " \
                   "reference trains on it)"
    assert L.steps_per_epoch(9, 8, keep_partial=True) == 1 and L.partial_batch_dropped(10, 8) is None
    assert [len(L.global_batch(9, 8, s, 0, keep_partial=True)) for s in range(2)] == [8, 8]
    cfg = resolve_config("cause", "cityscapes", "paper")
    cfg = {**cfg, "ddp_processes": 14, "n_train_items": 120}  # rank 0's share: 9 items in batches of 16
    assert cause_deviations(cfg, 2) == []  # 9 < 16: one batch of all 9, nothing dropped
    cfg["stage2"] = {**cfg["stage2"], "batch_size": 8}
    assert cause_deviations(cfg, 2) == [f"stage2: {note}"]
    stego = {**resolve_config("stego", "cityscapes", "paper"), "batch_size": 8}
    assert S.stego_deviations(stego, {"mode": "reference"}, None, 9)[1] == note
