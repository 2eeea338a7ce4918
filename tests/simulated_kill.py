"""A repair killed mid-run, for the resume tests: the production loop has no test hook."""

from collections.abc import Callable


def killed_at(load: Callable, iteration: int | None) -> Callable:
    """``load`` that raises KeyboardInterrupt when the repair asks for the image of ``iteration``
    (it reads one image per iteration, in order), as a kill before that iteration would stop it."""
    if iteration is None:
        return load
    calls = {"n": 0}

    def load_until_killed(path):
        if calls["n"] >= iteration:
            raise KeyboardInterrupt(f"simulated kill at iteration {iteration}")
        calls["n"] += 1
        return load(path)

    return load_until_killed
