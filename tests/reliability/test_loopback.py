"""Local mode listens on loopback only: every socket that the run's processes (the driver,
Spark's JVM and Python workers, Horovod's services, the ranks) listen on during a
2-rank training, by each launcher, is bound to a loopback address (issue 12: Horovod's
unauthenticated rendezvous store used to listen on every interface)."""

import ipaddress
import os
import threading
import time

import psutil
import pytest
import torch

from horovod_llm.launchers.horovod_env import horovod_honours_bind_address
from horovod_llm.launchers.launch import launch_training
from tests.e2e.test_train import with_output

pytestmark = [pytest.mark.spark, pytest.mark.horovod]


class ListeningSockets(threading.Thread):
    """Records (process name, address, port) of every listening socket of this process
    and its descendants, polled while the training runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: set[tuple[str, str, int, bool]] = set()  # (name, ip, port, in this process)
        self.where: dict[tuple, str] = {}  # each socket's process and its ancestors, for a failure's message
        self.stop = threading.Event()

    def poll(self) -> None:
        me = psutil.Process(os.getpid())
        for process in [me, *me.children(recursive=True)]:
            try:
                name = " ".join(process.cmdline()[:3])[:80]
                for conn in process.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        key = (name, conn.laddr.ip, conn.laddr.port, process.pid == me.pid)
                        if key not in self.seen:
                            self.seen.add(key)
                            chain = [f"{p.pid} {' '.join(p.cmdline()[:6])[:160]}" for p in [process, *process.parents()]]
                            self.where[key] = f"started {time.strftime('%H:%M:%S', time.localtime(process.create_time()))}: " + " <- ".join(chain)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue

    def run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            time.sleep(0.1)


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # the JVM listens on ::ffff:127.0.0.1
    return (mapped or address).is_loopback


# torchrun's agent in the first task of TorchDistributor's barrier stage serves its
# rendezvous store (torch's TCPStore) on every interface: torch binds the wildcard address
# whatever host it is given, and TorchDistributor starts torchrun itself, so nothing here
# can hand it a socket of its own. docs/reliability.md (Security) states this exposure;
# this is the one such socket allowed, and only under that launcher.
def torchrun_store(socket: tuple[str, str, int, bool]) -> bool:
    return "torch.distributed.run" in socket[0] or "torchrun" in socket[0]


@pytest.mark.parametrize("launcher", ["spark", "horovodrun", "torch_distributor"])
def test_local_training_listens_on_loopback_only(fresh_run, tiny_dataset, spark, launcher):
    assert horovod_honours_bind_address(), "this Horovod was built without install-stack.sh's bind-address patch"
    config, _ = tiny_dataset
    sockets = ListeningSockets()
    sockets.poll()
    before = set(sockets.seen)
    sockets.start()
    try:
        launch_training(with_output(config, fresh_run, launcher=launcher, max_steps=6, checkpoint_interval=0), spark)
    finally:
        sockets.stop.set()
        sockets.join()
    during = sockets.seen - before
    # Horovod's own servers were seen: its rendezvous (and, under Spark, its driver service)
    # listen in the launching process, this one or horovodrun's
    if launcher == "torch_distributor":
        launching = [s for s in during if torchrun_store(s)]
    else:
        launching = [s for s in during if (s[3] if launcher == "spark" else "horovod.runner.launch" in s[0])]
    assert launching, during
    # Every socket the run opened, and Spark's (opened by the session), is on loopback.
    # Sockets this process held before the run are left out: tests that call
    # horovod.spark.run directly, not through the product, leave Horovod's servers behind.
    exposed = [s for s in sockets.seen if not is_loopback(s[1]) and (s in during or not s[3])]
    if launcher == "torch_distributor":
        stores = [s for s in exposed if torchrun_store(s)]
        assert len({s[2] for s in stores}) <= 1, f"more than torchrun's one store: {stores}"
        exposed = [s for s in exposed if s not in stores]
    assert not exposed, f"listening beyond loopback: {[(s, sockets.where.get(s)) for s in exposed]}"


def test_the_in_process_torch_rank_listens_on_loopback_only():
    # train.launcher=local without Horovod: torch.distributed in this process. A tcp://
    # rendezvous made torch's TCPStore listen on every interface ('::').
    from horovod_llm.config import TrainConfig
    from horovod_llm.training.comm import TorchCollectives

    sockets = ListeningSockets()
    sockets.poll()
    before = set(sockets.seen)
    comm = TorchCollectives(TrainConfig())
    try:
        assert comm.allreduce(torch.ones(3), "sum", "probe").tolist() == [1.0, 1.0, 1.0]
        sockets.poll()
    finally:
        comm.close()
    during = sockets.seen - before
    exposed = [s for s in during if not is_loopback(s[1])]
    assert not exposed, f"listening beyond loopback: {[(s, sockets.where.get(s)) for s in exposed]}"
