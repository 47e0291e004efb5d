"""train.bind_cores: which cores each rank of a host gets, and a process's threads, all
of them, really bound there."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from horovod_llm.training.affinity import bind_rank, binds, cores_for_rank, topology_order


def test_ranks_that_fill_the_cores_get_a_slice_each():
    cpus = {0, 1, 2, 3}
    assert [cores_for_rank(r, 2, 2, cpus) for r in range(2)] == [[0, 1], [2, 3]]
    assert [cores_for_rank(r, 4, 1, cpus) for r in range(4)] == [[0], [1], [2], [3]]
    assert cores_for_rank(0, 1, 4, cpus) == [0, 1, 2, 3]


@pytest.mark.parametrize("ranks, threads", [(1, 1), (2, 1), (3, 2), (4, 2)])
def test_ranks_that_leave_cores_free_or_share_them_are_left_to_the_kernel(ranks, threads):
    assert all(cores_for_rank(r, ranks, threads, {0, 1, 2, 3}) is None for r in range(ranks))


def test_hardware_threads_of_one_core_go_to_one_rank(tmp_path):
    # 2 cores x 2 hardware threads, numbered as Linux numbers them: siblings are cpu and cpu + 2
    for cpu, core in {0: 0, 1: 1, 2: 0, 3: 1}.items():
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{core}\n")
    assert topology_order({0, 1, 2, 3}, tmp_path) == [0, 2, 1, 3]
    assert topology_order({3, 1}, tmp_path / "missing") == [1, 3]  # no topology: by number


def test_the_setting_names_the_backend_whose_ranks_are_bound():
    assert binds("horovod", "horovod") and not binds("horovod", "torch")
    assert binds("all", "horovod") and binds("all", "torch")
    assert not binds("none", "horovod") and not binds("none", "torch")


def test_false_binds_nothing():
    assert bind_rank(False, 0, 1, len(os.sched_getaffinity(0))) is None


def test_every_thread_of_the_process_is_bound_the_ones_already_running_too():
    """In a child process (binding this one would bind the test runner): a thread started
    before the binding, as Horovod's background thread is, and one started after."""
    script = textwrap.dedent(
        """
        import json, os, threading
        from horovod_llm.training.affinity import bind_rank
        allowed = sorted(os.sched_getaffinity(0))
        go, done, seen = threading.Event(), threading.Event(), {}
        def before():
            go.wait(); seen["before"] = sorted(os.sched_getaffinity(0)); done.set()
        threading.Thread(target=before).start()
        seen["cores"] = bind_rank(True, len(allowed) - 1, len(allowed), 1)  # the last of one rank per core
        go.set(); done.wait()
        late = threading.Thread(target=lambda: seen.update(after=sorted(os.sched_getaffinity(0))))
        late.start(); late.join()
        print(json.dumps({**seen, "main": sorted(os.sched_getaffinity(0)), "allowed": allowed}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert len(seen["cores"]) == 1 and seen["cores"][0] in seen["allowed"]
    assert seen["main"] == seen["before"] == seen["after"] == seen["cores"]
