"""Keeps a long-running process's resident memory from creeping up with large short-lived
buffers (glibc malloc): a background thread hands the heap's free pages back every second.

Measured (``bench/bench_soak.py``, issue 25 item 0): the emotion node fed 1280x720 raw frames at
5 Hz grew by about 5 MiB/min for as long as it ran, although every per-track and per-frame
cache was full and bounded; with compressed frames it stayed flat. The cause is glibc malloc's
*dynamic* mmap threshold: a buffer of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB at start) is
mmapped and returned to the system when freed, but freeing one raises the threshold to its size
(up to 32 MiB). After the first freed frame, every frame-sized buffer (a 2.7 MB image, its numpy
copies, the deserialized message) comes from the heap arenas of whichever thread allocates it
(the executor's, the worker's), and the arenas fragment: free holes between live blocks stay
resident. ``malloc_trim(0)`` gives every free page of every arena back (``MADV_DONTNEED``, also
in the middle of a heap), without changing how anything is allocated.

Tried first and rejected: a fixed threshold (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``) kept the RSS
flat too, but made every large torch activation an mmap / munmap with fresh zeroed pages: the
detector + face baseline on zidane.jpg ran 1.2-1.9x slower per frame.

Started by the node processes (``nodes.lifecycle.run_node_process``). ``EP_MALLOC_TRIM_PERIOD_S``
(seconds, default :data:`DEFAULT_PERIOD_S`, 0 turns it off) sets the period. Does nothing on a C
library without ``malloc_trim`` (musl, macOS).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Callable

#: seconds between two trims (each walks the free chunks: milliseconds for a 1 GB node)
DEFAULT_PERIOD_S = 1.0


def _malloc_trim() -> Callable[[], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return lambda: trim(0)


def trim_now() -> bool:
    """Give the heap's free pages back to the system once; False without glibc's
    ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim()
    return True


def trim_periodically(environ: dict | None = None) -> threading.Event | None:
    """Start a daemon thread that trims the heap every ``EP_MALLOC_TRIM_PERIOD_S`` seconds;
    returns the event that stops it, or None when off or without ``malloc_trim``."""
    env = os.environ if environ is None else environ
    period = float(env.get('EP_MALLOC_TRIM_PERIOD_S', DEFAULT_PERIOD_S))
    trim = _malloc_trim()
    if period <= 0 or trim is None:
        return None
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period):
            trim()

    threading.Thread(target=loop, name='malloc_trim', daemon=True).start()
    return stop
