"""What the packages share below `studies`: the per-host measuring lock, and the way a
config value object is validated and its errors are told.

`trainers` and `hardware_profiles` both take the lock (training batches shared, timing
runs exclusive), so it lives below both of them; neither imports the other. Every config
group's typed fields are checked by pydantic and reported through `common._validation`.
"""

from ._lock import LOCK_DIR_ENV, busy, lock_dir, measuring
from ._validation import (
    CONFIG,
    Problem,
    allowed_text,
    checked,
    choices,
    field_infos,
    one_line,
    problems,
)

__all__ = [
    "CONFIG",
    "LOCK_DIR_ENV",
    "Problem",
    "allowed_text",
    "busy",
    "checked",
    "choices",
    "field_infos",
    "lock_dir",
    "measuring",
    "one_line",
    "problems",
]
