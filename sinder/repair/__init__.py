"""Algorithm 1, the SINDER repair: ``config`` (every hyper-parameter, validated), ``svd`` (singular-value
parametrisation), ``step`` (one iteration), ``run`` (the resumable loop), ``job`` (a checkpoint in, a repaired
checkpoint, its report and figure out), ``report``, ``smoke`` (the short repair of the embedded demo).

``sinder.repair.RepairRun`` (and ``RepairResult``) stay importable from the package, as before the split.
"""

from sinder.repair.config import RepairConfig  # noqa: F401
from sinder.repair.run import RepairResult, RepairRun  # noqa: F401


def __getattr__(name):
    # the job pulls in census, plots and checkpoint formats: loaded only when asked for
    if name == "repair_checkpoint":
        from sinder.repair.job import repair_checkpoint

        return repair_checkpoint
    raise AttributeError(f"module 'sinder.repair' has no attribute {name!r}")
