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

from horovod_llm.launch import horovod_honours_bind_address, launch_training
from tests.e2e.test_train import with_output

pytestmark = [pytest.mark.spark, pytest.mark.horovod]


class ListeningSockets(threading.Thread):
    """Records (process name, address, port) of every listening socket of this process
    and its descendants, polled while the training runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: set[tuple[str, str, int, bool]] = set()  # (name, ip, port, in this process)
        self.stop = threading.Event()

    def poll(self) -> None:
        me = psutil.Process(os.getpid())
        for process in [me, *me.children(recursive=True)]:
            try:
                name = " ".join(process.cmdline()[:3])[:80]
                for conn in process.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        self.seen.add((name, conn.laddr.ip, conn.laddr.port, process.pid == me.pid))
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


@pytest.mark.parametrize("launcher", ["spark", "horovodrun"])
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
    launching = [s for s in during if (s[3] if launcher == "spark" else "horovod.runner.launch" in s[0])]
    assert launching, during
    # Every socket the run opened, and Spark's (opened by the session), is on loopback.
    # Sockets this process held before the run are left out: tests that call
    # horovod.spark.run directly, not through the product, leave Horovod's servers behind.
    exposed = [s for s in sockets.seen if not is_loopback(s[1]) and (s in during or not s[3])]
    assert not exposed, f"listening beyond loopback: {exposed}"
