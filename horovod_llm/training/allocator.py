"""Keep the memory a training step frees for the next step.

A step allocates and frees the same tensors of several MB each (logits and their
gradient, attention's buffers). With glibc's defaults, malloc maps a large block on its
own and unmaps it when freed, and gives the top of its heap back to the kernel whenever
more than its trim threshold lies free there; either way the next step faults the same
memory in again, a page at a time, zeroed. A rank of the demo's model under Spark took
about 5,800 page faults a step (strace: the heap's break moved up and back by 32 MB at
every step), and its steps ran at 0.85 of a bare loop's speed; with this, 0.99
(bench/overhead.py, issue 28). Blocks over 32 MB, such as a large vocabulary's logits,
are mapped and unmapped at every step whatever glibc's dynamic thresholds learn.

Here malloc serves every block from its heap and never trims it: a rank's resident size
stays at its peak, which it reaches at every step anyway. Memory a thread's own arena
cannot hold is still mapped (glibc falls back to mmap where a heap cannot grow).

glibc's own knob (mallopt(3)) rather than a preloaded jemalloc or tcmalloc, which
PyTorch's CPU tuning guide suggests for this: a preload must be in place before the
interpreter starts, which a rank started by Spark, Horovod or TorchDistributor does not
control, and neither allocator is in this stack.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
# Free memory at the heap's top given back only beyond this (mallopt takes an int).
TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory mapped (see the module's docstring);
    False where the C library is not glibc or refused, which costs only speed."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in the C library (%s): malloc keeps its defaults", name)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # no block mapped on its own (0 of them at once), and no trimming
    done = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        log.debug("mallopt refused the thresholds: malloc keeps its defaults")
    return done
