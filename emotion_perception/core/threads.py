"""Keep one library from changing the CPU thread settings of every model in the process.

Importing ultralytics sets ``OMP_NUM_THREADS=1`` when it is unset, and its first inference calls
``torch.set_num_threads(cpu_count - 1)`` (1 on a 2-core robot computer), for the whole process:
an emotion model sharing the process (``emotion-perception process``, composed nodes) then runs
on that many threads. ``keep_torch_threads`` restores both afterwards.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count and ``OMP_NUM_THREADS`` on exit."""
    torch = sys.modules.get('torch')
    threads = torch.get_num_threads() if torch is not None else None
    omp = os.environ.get('OMP_NUM_THREADS')
    try:
        yield
    finally:
        if omp is None:
            os.environ.pop('OMP_NUM_THREADS', None)
        else:
            os.environ['OMP_NUM_THREADS'] = omp
        torch = sys.modules.get('torch')
        if threads is not None and torch is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


__all__ = ['keep_torch_threads']
