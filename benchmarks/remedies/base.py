"""The remedy interface, now in :mod:`benchmarks.core.remedy` (beside ``Task``); re-exported here so that
``from benchmarks.remedies.base import ...`` keeps working."""

from benchmarks.core.remedy import (
    REPAIR_SECONDS_KEY,
    Remedy,
    default_cost,
    discover,
    get_remedy,
    key_value_args,
    list_remedies,
    register_remedy,
    remedy_role,
)

__all__ = ["REPAIR_SECONDS_KEY", "Remedy", "default_cost", "discover", "get_remedy", "key_value_args",
           "list_remedies", "register_remedy", "remedy_role"]  # fmt: skip
