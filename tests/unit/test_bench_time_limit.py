"""bench/common.py's time_limit: a benchmark block that hangs ends the bench with every
thread's stack, even while the main thread is blocked outside Python's reach."""

import subprocess
import sys
import time

from tests.conftest import REPO_ROOT

PRELUDE = f"import sys, time, threading; sys.path.insert(0, {str(REPO_ROOT / 'bench')!r}); from common import time_limit\n"
# the main thread blocked on a lock it holds, as in a collective that never completes
HUNG = 'with time_limit(1, "a hung run"):\n    lock = threading.Lock()\n    lock.acquire()\n    lock.acquire()\n'
QUICK = 'with time_limit(1, "a quick run"):\n    pass\ntime.sleep(2)\nprint("still here")\n'


def run(body: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", PRELUDE + body], capture_output=True, text=True, timeout=60)
    return done, time.monotonic() - started


def test_a_block_past_its_limit_ends_the_bench_with_the_stacks():
    done, seconds = run(HUNG)
    assert done.returncode != 0 and seconds < 20
    assert "Timeout" in done.stderr and "<module>" in done.stderr  # the stack, naming where it waited
    assert "(time limit 1 s: a hung run)" in done.stdout


def test_a_block_within_its_limit_leaves_no_timer_behind():
    done, _ = run(QUICK)
    assert done.returncode == 0 and "still here" in done.stdout, done.stderr
