"""The collectives a training rank needs, behind one small interface with two
implementations: Horovod (`horovod.torch`) and `torch.distributed` (Gloo on CPU).

The worker (train.py, step.py) calls only these: the averaged-gradient optimizer, the
broadcast of rank 0's weights and optimizer state, metric reductions, gathers and a
barrier; and `run`, which runs the training loop, under Horovod elastic where the job
asked for it (the torch backend has no elastic mode: its launcher is refused one before
any rank starts, config.validate). Each backend also sets its own environment and
describes itself for the run summary.

Neither module is imported here at load time: `horovod_llm` imports and trains with
`train.launcher=torch_distributor` (or `local`) where Horovod is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from horovod_llm.config import TrainConfig

import os
import re
import socket
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch

from horovod_llm.training.device import on_cpu
from horovod_llm.training.host_reduction import HostReduction
from horovod_llm.training.pipe_barrier import RankLost


class LoopState:
    """The mutable part of training (the model, the optimizer, the step and the data
    position), with the interface of Horovod elastic's TorchState that the loop uses."""

    def __init__(self, model: torch.nn.Module, optimizer, **fields):
        self.model, self.optimizer = model, optimizer
        self.__dict__.update(fields)

    def commit(self) -> None:
        """Nothing to do: without elastic mode no reset ever rolls back to a commit."""


class Collectives(ABC):
    """What every backend offers; `rank`, `size`, `local_size` (ranks on this host) and
    `local_rank` (this rank's place among them)."""

    backend: str
    rank: int
    size: int
    local_size: int
    local_rank: int
    elastic = False  # the loop runs under Horovod elastic: ranks may leave and join
    gradient_reduction: str | None = None  # "shared_memory" or the backend's name, once an optimizer averages
    host_reduction: HostReduction | None = None  # the shared-memory reduction, where it carries the average
    cores: list[int] | None = None  # the cores this rank is bound to (training/affinity.py), None where unbound
    mpi_built = False  # Adasum on CPU needs Horovod built with MPI

    def loop_state(self, model: torch.nn.Module, optimizer, **fields) -> LoopState:
        """The state the loop trains (`state.step`, `state.commit()`...)."""
        return LoopState(model, optimizer, **fields)

    def run(self, loop, state, *args):
        """`loop(state, *args)`; under Horovod elastic, again from the last commit after
        ranks leave or join."""
        return loop(state, *args)

    def describe(self, train: TrainConfig) -> dict:
        """The run summary's `collectives` block: the backend and how it reduces."""
        return {
            "backend": self.backend,
            "compression": "fp16" if train.fp16_allreduce else "none",
            "op": train.allreduce_op,
            # what carried the gradients' average: the backend, or shared memory on one host
            "gradient_reduction": self.gradient_reduction or self.backend,
            "backward_passes_per_step": train.backward_passes_per_step,
            "lr_scaled_by_ranks": train.scale_lr_by_ranks,
            "elastic": self.elastic,
            # Horovod's background thread period; torch.distributed has none
            "cycle_time_ms": None,
        }

    @abstractmethod
    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, train: TrainConfig):
        """`optimizer` averaging gradients over the ranks; `synchronize()` finishes the
        reduction (after the step's last backward pass) and `step()` inside
        `skip_synchronize()` steps without a second one."""
        ...

    def averaging_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, train: TrainConfig) -> AveragingOptimizer:
        """An AveragingOptimizer; a collective where the gradients may go through shared
        memory (fp32 on CPU, every rank on this host: HostReduction.open decides)."""
        parameters = list(model.parameters())
        host = None
        if train.shared_memory_allreduce and not train.fp16_allreduce and all(p.device.type == "cpu" for p in parameters):
            host = HostReduction.open(self, sum(p.numel() for p in parameters), pipes=train.shared_memory_barrier == "pipes")
        self.gradient_reduction = "shared_memory" if host is not None else self.backend
        self.host_reduction = host
        return AveragingOptimizer(optimizer, parameters, self, fp16=train.fp16_allreduce, host=host)

    @abstractmethod
    def broadcast_object(self, value, name: str): ...

    def broadcast_model(self, model: torch.nn.Module, optimizer) -> None:
        """Every rank takes rank 0's weights and optimizer state.

        The state travels as one object, as it is: Horovod's broadcast_optimizer_state
        would first initialise an empty state with a step on zero gradients, which under
        AdamW decays the weights once and advances its step count (a fresh run then took
        its first step unlike torch's, and a resumed run decayed the other ranks' copy of
        the weights rank 0 had just sent).
        """
        self.broadcast_parameters(model)
        # From the CPU: pickled CUDA tensors would land on each receiver's first GPU,
        # whichever its own is; load_state_dict moves the state to the parameters' device.
        state = self.broadcast_object(on_cpu(optimizer.state_dict()) if self.rank == 0 else None, name="optimizer_state")
        if self.rank != 0:
            optimizer.load_state_dict(state)

    @abstractmethod
    def broadcast_parameters(self, model: torch.nn.Module) -> None: ...

    @abstractmethod
    def average_(self, tensor: torch.Tensor) -> None:
        """`tensor`, in place, becomes its mean over the ranks (the gradients' reduction)."""
        ...

    @abstractmethod
    def allreduce(self, tensor: torch.Tensor, op: str, name: str) -> torch.Tensor:
        """A new tensor: the element-wise "sum" or "max" over the ranks."""
        ...

    @abstractmethod
    def allgather_object(self, value, name: str) -> list: ...

    @abstractmethod
    def barrier(self) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Leave the group (a process that trains again re-initialises)."""

    def close_host_reduction(self) -> None:
        """The shared-memory reduction's pipes, which a later run in this process does not reuse."""
        if self.host_reduction is not None:
            self.host_reduction.close()
            self.host_reduction = None


# Marks HOROVOD_CYCLE_TIME as set from a config, not by the user: an earlier run in the
# same process (the local launcher, a notebook) or in a parent (ranks inherit the
# driver's environment) must not pin its value on the next run's config.
_CYCLE_TIME_FROM_CONFIG = "HOROVOD_LLM_CYCLE_TIME_FROM_CONFIG"


def set_horovod_environment(train: TrainConfig) -> None:
    """Horovod's settings read from the environment at hvd.init(); a value the user (or
    horovodrun's --cycle-time-ms) set wins over the config."""
    current = os.environ.get("HOROVOD_CYCLE_TIME")
    if current is None or current == os.environ.get(_CYCLE_TIME_FROM_CONFIG):
        os.environ["HOROVOD_CYCLE_TIME"] = os.environ[_CYCLE_TIME_FROM_CONFIG] = str(train.horovod_cycle_time_ms)


class HorovodCollectives(Collectives):
    backend = "horovod"

    def __init__(self, train: TrainConfig, device: torch.device | None = None):
        import horovod.torch as hvd

        set_horovod_environment(train)
        hvd.init()
        self.hvd = hvd
        self.elastic = train.elastic
        self.mpi_built = hvd.mpi_built()

    def loop_state(self, model, optimizer, **fields):
        if not self.elastic:
            return super().loop_state(model, optimizer, **fields)
        # Horovod elastic: on a change every rank rolls back to the last commit (in
        # memory) and the loop starts again at the new size.
        return self.hvd.elastic.TorchState(model=model, optimizer=optimizer, **fields)

    def run(self, loop, state, *args):
        return self.hvd.elastic.run(loop)(state, *args) if self.elastic else loop(state, *args)

    def describe(self, train):
        return {**super().describe(train), "cycle_time_ms": float(os.environ["HOROVOD_CYCLE_TIME"])}

    # Read at each use: an elastic reset changes them.
    @property
    def rank(self) -> int:
        return self.hvd.rank()

    @property
    def size(self) -> int:
        return self.hvd.size()

    @property
    def local_size(self) -> int:
        return self.hvd.local_size()

    @property
    def local_rank(self) -> int:
        return self.hvd.local_rank()

    def distributed_optimizer(self, optimizer, model, train):
        hvd = self.hvd
        if train.allreduce_op == "average" and not self.elastic:
            # One fused allreduce of the whole gradient after the last backward pass, from
            # this thread. Horovod's DistributedOptimizer reduces each parameter from a
            # hook as backward produces it and overlaps the two, which pays where a core
            # is free for the reduction; with every core computing (2 ranks on 2 cores),
            # the hooks, the negotiation of each tensor and synchronize()'s spin-wait (since
            # patched away) cost it 4-28% of the step's tokens/s against this, paired runs
            # of 250 steps (bench/overhead.py has the loop's share of the wait). Adasum reduces per
            # tensor and elastic state tracks Horovod's own optimizer: those keep it.
            return self.averaging_optimizer(optimizer, model, train)
        # Horovod: average gradients across ranks with ring-allreduce.
        return hvd.DistributedOptimizer(
            optimizer,
            named_parameters=model.named_parameters(),
            compression=hvd.Compression.fp16 if train.fp16_allreduce else hvd.Compression.none,
            backward_passes_per_step=train.backward_passes_per_step,
            op=hvd.Adasum if train.allreduce_op == "adasum" else hvd.Average,
        )

    def broadcast_object(self, value, name):
        return self.hvd.broadcast_object(value, root_rank=0, name=name)

    def broadcast_parameters(self, model):
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def allreduce(self, tensor, op, name):
        return self.hvd.allreduce(tensor, op={"sum": self.hvd.Sum, "max": self.hvd.Max}[op], name=name)

    def average_(self, tensor):
        self.hvd.allreduce_(tensor, op=self.hvd.Average, name="gradients")

    def allgather_object(self, value, name):
        return self.hvd.allgather_object(value, name=name)

    def barrier(self):
        self.hvd.barrier()

    def close(self) -> None:
        """Horovod stays initialised for the process (it shuts down at exit), and
        hvd.init() again is a no-op."""
        self.close_host_reduction()


class TorchCollectives(Collectives):
    """torch.distributed with Gloo. Its ranks come from the environment torchrun (which
    TorchDistributor starts in each Spark task) sets; without it, one rank on loopback."""

    backend = "torch"

    def __init__(self, train: TrainConfig, device: torch.device | None = None):
        import torch.distributed as dist

        self.dist = dist
        if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
            rendezvous = {"init_method": "env://"}
        else:
            # The in-process rank (train.launcher=local without Horovod) has no peer to
            # meet: an in-memory store, where a tcp:// one would listen on every
            # interface (torch's TCPStore binds the wildcard address whatever host it is given).
            rendezvous = {"store": dist.HashStore(), "rank": 0, "world_size": 1}
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        # A collective waits this long for a silent peer (one whose host vanished without
        # closing its connections); a killed rank's peers fail at once. Rank 0 writing a
        # checkpoint to slow storage keeps the others waiting too: the same bound as
        # Horovod's start timeout keeps both launchers' patience alike.
        # On CUDA, one group with two backends: NCCL for the gradients (CUDA tensors), Gloo
        # for the metrics and objects (CPU tensors).
        backend = "cpu:gloo,cuda:nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=max(train.start_timeout, 60)), **rendezvous)
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        # torchrun starts one rank per Spark task, so its LOCAL_WORLD_SIZE is 1 even where
        # two tasks share a host: count the ranks on this host instead, as Horovod does.
        hosts = self.allgather_object(socket.gethostname(), "hosts")
        self.local_size = hosts.count(socket.gethostname())
        self.local_rank = hosts[: self.rank].count(socket.gethostname())

    def distributed_optimizer(self, optimizer, model, train):
        return self.averaging_optimizer(optimizer, model, train)

    def broadcast_object(self, value, name):
        holder = [value]
        self.dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def broadcast_parameters(self, model):
        for tensor in model.state_dict().values():  # views of the parameters: in place
            self.dist.broadcast(tensor, src=0)

    def average_(self, tensor):
        self.dist.all_reduce(tensor)
        tensor /= self.size

    def allreduce(self, tensor, op, name):
        result = tensor.clone()
        self.dist.all_reduce(result, op={"sum": self.dist.ReduceOp.SUM, "max": self.dist.ReduceOp.MAX}[op])
        return result

    def allgather_object(self, value, name):
        gathered = [None] * self.size
        self.dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self):
        self.dist.barrier()

    def close(self) -> None:
        self.close_host_reduction()
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


class AveragingOptimizer:
    """An optimizer whose step uses the gradient averaged over the ranks, with the
    interface of Horovod's DistributedOptimizer that train_step relies on, over either
    backend's `average_` (torch.distributed's all_reduce, or Horovod's allreduce_).

    Written here rather than wrapping the model in DistributedDataParallel: the step
    already has Horovod's shape (micro-batches accumulate locally, then one reduction,
    then clipping of the averaged gradient), so one all_reduce of the flattened
    gradients is exactly the collective DDP would issue for a model of one bucket (the
    recipe's models are a few MB, under DDP's 25 MB bucket), it keeps the module and its
    checkpoint keys as they are, and the reduction stays a separately timed part of the
    step (the `allreduce_share` statistic).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter], comm: Collectives, fp16: bool, host: HostReduction | None = None
    ):
        self.optimizer, self.parameters, self.comm, self.fp16, self.host = optimizer, parameters, comm, fp16, host
        self._skip = False

    def __getattr__(self, name):  # param_groups, state, state_dict, load_state_dict...
        return getattr(self.optimizer, name)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def synchronize(self) -> None:
        if self.comm.size == 1:  # one rank: its gradient is the average
            return
        for parameter in self.parameters:
            if parameter.grad is None:  # every rank must send the same buffer
                parameter.grad = torch.zeros_like(parameter)
        grads = [parameter.grad for parameter in self.parameters]
        if self.host is not None:
            # Flattened straight into this rank's row of the shared segment; the mean
            # comes back in a buffer the reduction keeps, and the parameters take views of
            # it as their gradients instead of a copy: two passes over the gradient less
            # a step. The step's zero_grad drops them, and the next backward pass makes
            # new ones before the buffer is written again.
            torch.cat([grad.reshape(-1) for grad in grads], out=self.host.slot())
            mean, offset = self.host.average(), 0
            for parameter in self.parameters:
                parameter.grad = mean[offset : offset + parameter.numel()].view_as(parameter)
                offset += parameter.numel()
            return
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        wire = flat.to(torch.float16) if self.fp16 else flat
        self.comm.average_(wire)
        flat = wire.to(flat.dtype)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    @contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        self._skip = True
        try:
            yield
        finally:
            self._skip = False

    def step(self, closure=None):
        if not self._skip:
            self.synchronize()
        return self.optimizer.step(closure)


# How Gloo's transport words a lost peer, in the RuntimeError torch.distributed raises.
_GLOO_LOST_PEER = re.compile(r"Connection (closed|reset) by peer|gloo/transport/tcp|Timed out waiting .* for (recv|send)")


def lost_peer(exc: BaseException) -> bool:
    """Whether `exc` says a collective failed because another rank was lost: Horovod's
    HorovodInternalError; under torch.distributed a DistError, or the plain RuntimeError
    Gloo's transport raises for a peer that closed its connections or went silent; the
    shared-memory reduction's RankLost."""
    if isinstance(exc, RankLost):
        return True
    horovod_errors = sys.modules.get("horovod.common.exceptions")
    if horovod_errors is not None and isinstance(exc, horovod_errors.HorovodInternalError):
        return True
    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and _GLOO_LOST_PEER.search(str(exc)) is not None


def cuda_unsupported(backend: str) -> str | None:
    """Why the collectives of `backend` cannot reduce CUDA tensors here, or None: Horovod
    needs a build with NCCL (HOROVOD_GPU_OPERATIONS=NCCL), torch.distributed its NCCL."""
    if backend == "horovod":
        import horovod.torch as hvd

        if not hvd.nccl_built():
            return "this Horovod was built without NCCL (build it with HOROVOD_GPU_OPERATIONS=NCCL, as the GPU bootstrap does, or use train.launcher=torch_distributor)"
        return None
    import torch.distributed as dist

    return None if dist.is_nccl_available() else "this torch has no NCCL"


def init_collectives(backend: str, train: TrainConfig, device: torch.device | None = None) -> Collectives:
    """This process's ranks, through `backend` ("horovod" or "torch"), for tensors on
    `device` (CPU: Gloo; CUDA: NCCL)."""
    if backend == "horovod":
        return HorovodCollectives(train, device)
    return TorchCollectives(train, device)
