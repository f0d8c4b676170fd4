"""The errors the entry points turn into one line and an exit status instead of a traceback.

`UserError` (and any `ValueError` from our argument and config checks): something the user can fix —
exit status 2. `TrainingStopped`: the run stopped itself because training went wrong (non-finite or
diverging loss) — exit status 3, after its checkpoints are safely written.
"""
from __future__ import annotations

import errno
import os
import shutil
from typing import Optional

EXIT_USER_ERROR = 2
EXIT_TRAINING_STOPPED = 3


class UserError(ValueError):
    """A mistake or an environment problem the user can fix (bad input, workdir in use, disk full)."""


class DiskFullError(UserError):
    """No space left for a checkpoint (orbax's background writers may still be failing)."""


class TrainingStopped(RuntimeError):
    """Training stopped itself: the loss became non-finite or diverged."""


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or anything it was raised from, is ENOSPC (orbax wraps the OSError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if 'No space left on device' in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(directory: str, needed_bytes: Optional[int]) -> DiskFullError:
    """One line naming the directory, what a checkpoint needs and what is free there."""
    try:
        free = shutil.disk_usage(directory if os.path.isdir(directory) else os.path.dirname(directory)).free
        free_text = f'{free:,} bytes free'
    except OSError:
        free_text = 'free space unknown'
    needed = f'a checkpoint needs about {needed_bytes:,} bytes' if needed_bytes else 'a checkpoint needs more'
    return DiskFullError(f'disk full: no space left in {directory}: {needed}, {free_text}; free some space (or point '
                     f'--workdir elsewhere) and rerun the same command to resume from the last checkpoint.')
