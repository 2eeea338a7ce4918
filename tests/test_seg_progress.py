"""The mmseg trainings' progress bar: counts train iterations from the resumed one, and the test batches."""

import warnings
from types import SimpleNamespace

import torch

from benchmarks.segmentation.progress import ProgressBarHook


def test_bar_counts_iterations_from_the_resumed_one_and_the_test_batches():
    hook = ProgressBarHook("mmseg train")
    runner = SimpleNamespace(max_iters=12, iter=4, test_dataloader=[0, 1, 2])
    hook.before_train(runner)
    bar = hook.bar
    assert (bar.total, bar.n) == (12, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # float() of a tensor that requires grad warns
        for i in range(8):
            hook.after_train_iter(runner, i, outputs={"loss": torch.tensor(0.5, requires_grad=True) * 1})
    assert bar.n == 12 and bar.postfix == "loss=0.500"
    hook.after_train(runner)
    assert hook.bar is None
    hook.before_test(runner)
    test_bar = hook.bar
    for i in range(3):
        hook.after_test_iter(runner, i)
    assert (test_bar.total, test_bar.n) == (3, 3)
    hook.after_test(runner)
    assert hook.bar is None
