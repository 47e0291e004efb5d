"""What the Horovod launchers (spark, horovodrun) need of Horovod in the driver: that it
is installed, whether it has MPI (Adasum), and its servers bound to loopback locally."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from horovod_llm.errors import UserError
from horovod_llm.launchers.base import LOOPBACK, horovod_installed

log = logging.getLogger(__name__)

# Read by the find_port of the Horovod that scripts/install-stack.sh builds: its servers
# (the Gloo rendezvous store, which has no authentication, among them) bind this address
# instead of every interface.
BIND_ADDRESS_ENV = "HOROVOD_LLM_BIND_ADDRESS"


def require_horovod(launcher: str) -> None:
    """Refuse, in one line, a launcher that needs Horovod where it is not installed."""
    if not horovod_installed():
        raise UserError(
            f"train.launcher={launcher} needs Horovod, which is not installed here: "
            "run 'make setup' (scripts/install-stack.sh builds it), or set train.launcher=torch_distributor"
        )


def horovod_mpi_built(launcher) -> bool:
    """Whether this launcher's ranks have Horovod built with MPI (Adasum needs it); a
    launcher that needs Horovod where it is not installed is refused here."""
    if launcher.backend_name() != "horovod":
        return False
    require_horovod(launcher.name)
    import horovod.torch as hvd

    return hvd.mpi_built()


def horovod_honours_bind_address() -> bool:
    """Whether the installed Horovod carries the bind-address patch of install-stack.sh."""
    import inspect

    from horovod.runner.util import network

    return BIND_ADDRESS_ENV in inspect.getsource(network.find_port)


@contextmanager
def horovod_bound_to_loopback(context):
    """Local mode: Horovod's servers bind loopback, in this process (rendezvous, driver
    service) and in the Spark tasks horovod.spark.run starts (task services), whose
    Python workers get the variable through the SparkContext's executor environment."""
    if not horovod_honours_bind_address():
        log.warning("this Horovod lacks the bind-address patch, so its rendezvous listens on every interface: run 'make setup' to rebuild it")
    saved = os.environ.get(BIND_ADDRESS_ENV), context.environment.get(BIND_ADDRESS_ENV)
    os.environ[BIND_ADDRESS_ENV] = context.environment[BIND_ADDRESS_ENV] = LOOPBACK
    try:
        yield
    finally:
        for mapping, value in zip((os.environ, context.environment), saved, strict=True):
            if value is None:
                mapping.pop(BIND_ADDRESS_ENV, None)
            else:
                mapping[BIND_ADDRESS_ENV] = value
