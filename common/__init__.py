"""What the packages share below `studies`: the per-host measuring lock.

`trainers` and `hardware_profiles` both take the lock (training batches shared, timing
runs exclusive), so it lives below both of them; neither imports the other.
"""

from ._lock import LOCK_DIR_ENV, busy, lock_dir, measuring

__all__ = ["LOCK_DIR_ENV", "busy", "lock_dir", "measuring"]
