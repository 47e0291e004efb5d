"""training/allocator.py: a step's freed buffers stay mapped for the next step."""

import subprocess
import sys

import pytest

# A step's allocations in miniature: 40 MB buffers (a large vocabulary's logits) written,
# then freed: glibc's defaults map such a block on its own and unmap it when freed, so the
# next step faults it in again, whatever its dynamic thresholds learn (they stop at 32 MB).
STEPS = """
import sys, torch
from horovod_llm.training.metrics import thread_page_faults
if sys.argv[1] == "keep":
    from horovod_llm.training.allocator import keep_freed_memory
    assert keep_freed_memory()
def step():
    buffers = [torch.empty(10 * 1024 * 1024).fill_(1.0) for _ in range(2)]
    del buffers
for _ in range(3):
    step()
before = thread_page_faults()
for _ in range(20):
    step()
print((thread_page_faults() - before) / 20)
"""


def faults_per_step(mode: str) -> float:
    # a fresh interpreter each: mallopt changes the process for good
    done = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_step_buffers_are_not_faulted_in_again():
    buffer_pages = 40 * 1024 * 1024 / 4096
    default, kept = faults_per_step("default"), faults_per_step("keep")
    # glibc's defaults: a 40 MB buffer (at least) comes back from the kernel at each step
    assert default > 0.9 * buffer_pages
    # Kept, none should; the kernel's own reclaim of idle pages (DAMON, here) brings back
    # a few hundred now and then.
    assert kept < 0.25 * buffer_pages, f"{kept:.0f} page faults per step with freed memory kept"
