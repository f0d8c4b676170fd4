"""One writer per workdir: a lock file naming its holder (host, pid, start time), released on exit.

Two trainers on one workdir would interleave their metrics and race each other's checkpoint saves, so
the second one is refused with a one-line error naming the holder. A lock left behind by a process that
died on this host is taken over with a warning; a lock held from another host cannot be checked from
here, and the error says how to remove it by hand if that run is gone. Multi-host runs: only process 0
takes the lock.

The lock file is created with O_EXCL, which is atomic on local and NFS file systems. Object stores
(gs://) have no such primitive: there the lock is written and read back through tf.io.gfile, which
catches the common case (a second run started by mistake) but not a race within the same second.
"""
from __future__ import annotations

import json
import os
import socket
import time
from typing import Optional

from absl import logging

from mobilenets_jax import errors

LOCK_NAME = 'lock.json'


class WorkdirLockedError(errors.UserError):
    """Another live process holds the workdir (the CLIs exit with status 2)."""


def _is_remote(path: str) -> bool:
    return '://' in path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it exists, owned by someone else
        return True
    return True


def _describe(holder: dict) -> str:
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))
    return f'pid {holder.get("pid")} on {holder.get("host")} (started {started})'


class WorkdirLock:
    """Context manager holding `<workdir>/lock.json`; `WorkdirLockedError` if another live process has it."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.enabled = enabled
        self._held = False
        self._record = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.time()}

    def _read(self) -> Optional[dict]:
        try:
            if _is_remote(self.path):
                import tensorflow as tf
                with tf.io.gfile.GFile(self.path) as f:
                    return json.loads(f.read())
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None
        except Exception as error:   # tf.errors.NotFoundError for gs:// paths
            if type(error).__name__ == 'NotFoundError':
                return None
            raise

    def _create(self) -> bool:
        """Writes our record if no lock file exists; False if one does."""
        text = json.dumps(self._record)
        if _is_remote(self.path):
            import tensorflow as tf
            if tf.io.gfile.exists(self.path):
                return False
            with tf.io.gfile.GFile(self.path, 'w') as f:
                f.write(text)
            return (self._read() or {}).get('pid') == self._record['pid']
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        return True

    def _remove(self) -> None:
        if _is_remote(self.path):
            import tensorflow as tf
            tf.io.gfile.remove(self.path)
        else:
            os.remove(self.path)

    def acquire(self) -> None:
        if not self.enabled or self._held:
            return
        for _ in range(3):   # a stale lock is removed, then the create is retried
            if self._create():
                self._held = True
                return
            holder = self._read()
            if holder is None:   # being written or removed right now
                continue
            same_host = holder.get('host') == self._record['host']
            if same_host and not _pid_alive(int(holder.get('pid', -1))):
                logging.warning('Taking over the workdir lock %s left by %s, which is no longer running.',
                                self.path, _describe(holder))
                self._remove()
                continue
            where = '' if same_host else (f'; if that run is gone (another host cannot be checked from '
                                          f'here), delete {self.path}')
            raise WorkdirLockedError(f'{os.path.dirname(self.path)} is in use by {_describe(holder)}: one '
                                     f'training run per workdir{where}.')
        raise WorkdirLockedError(f'could not take the workdir lock {self.path}; retry')

    def release(self) -> None:
        if self._held:
            holder = self._read()
            if holder and holder.get('pid') == self._record['pid'] and holder.get('host') == self._record['host']:
                self._remove()
            self._held = False

    def __enter__(self) -> 'WorkdirLock':
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
