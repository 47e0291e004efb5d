"""bench/profile_loop.py: py-spy's stacks split by what the training loop was calling."""

import sys

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))  # bench scripts import each other as top-level modules
import profile_loop  # noqa: E402

RANK = "process 4242:python -m horovod.spark.task.gloo_exec_fn"


def test_a_steps_time_is_found_below_the_loop_of_this_and_older_checkouts():
    today = f"{RANK};train_loop (horovod_llm/training/loop.py:157);_train_entry (horovod_llm/training/loop.py:213)"
    before = f"{RANK};train_loop (horovod_llm/training/loop.py:160)"
    raw = "\n".join(
        [
            f"{today};train_step (horovod_llm/training/step.py:56);backward (torch/_tensor.py:623) 6",
            f"{today};_evaluate (horovod_llm/training/loop.py:380) 2",
            f"{before};train_step (horovod_llm/training/step.py:50);synchronize (horovod_llm/training/comm.py:320) 2",
        ]
    )
    (rank,) = profile_loop.shares_by_rank(raw)
    assert rank["samples"] == 10
    assert rank["shares"] == {"step: backward": 0.6, "evaluation": 0.2, "step: allreduce wait": 0.2}
