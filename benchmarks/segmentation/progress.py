"""A progress bar for mmengine's Runner, like the other trainings' (tqdm, cleared when done), with the loss.

With it the Runner can log at WARNING: the bar replaces mmengine's every-50-iterations INFO lines on the console.
"""

from __future__ import annotations

from mmengine.hooks import Hook


class ProgressBarHook(Hook):
    priority = "VERY_LOW"

    def __init__(self, desc: str, enabled: bool = True):
        self.desc = desc
        self.enabled = enabled
        self.bar = None

    def _open(self, total: int, initial: int, what: str) -> None:
        from sinder.utils.progress import progress

        self.bar = progress(total=total, initial=initial, desc=f"{self.desc} {what}", enabled=bool(self.enabled))

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def before_train(self, runner) -> None:
        self._open(runner.max_iters, runner.iter, "train")

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        loss = (outputs or {}).get("loss")
        if loss is not None and self.bar.n % 10 == 0:
            value = loss.detach() if hasattr(loss, "detach") else loss  # no autograd warning from float()
            self.bar.set_postfix(loss=f"{float(value):.3f}", refresh=False)

    def after_train(self, runner) -> None:
        self._close()

    def before_test(self, runner) -> None:
        self._open(len(runner.test_dataloader), 0, "eval")

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def after_test(self, runner) -> None:
        self._close()
