"""Distribution strategies: one small interface over local, Horovod and torch.distributed (DDP).

The training loop only calls ``wrap``, ``step``, ``broadcast_object``, ``allreduce_sum``, ``barrier`` and
``close``; which backend runs is ``train.backend``. Horovod and DDP pick NCCL on GPU and Gloo on CPU.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


class LocalStrategy:
    """One process: every collective is the identity."""

    name = "local"

    def __init__(self) -> None:
        self.rank, self.world_size, self.local_rank = 0, 1, 0

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        return model, optimizer

    def sync_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Make every rank's optimizer state rank 0's (after a resume)."""

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics) before evaluating; DDP does this itself."""

    def step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        """Apply the (already all-reduced) gradients through the loss scaler."""
        scaler.step(optimizer)
        scaler.update()

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def allreduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


class HorovodStrategy(LocalStrategy):
    """``horovod.torch``: DistributedOptimizer with named parameters, initial state broadcast from rank 0."""

    name = "horovod"

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd, self._broadcasts = hvd, 0
        self.rank, self.world_size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        hvd = self.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return model, hvd.DistributedOptimizer(optimizer, named_parameters=trainable)

    def sync_optimizer(self, optimizer: Any) -> None:
        if optimizer.state_dict()["state"]:  # a fresh optimizer has nothing to send (and would take a dummy step)
            self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def sync_buffers(self, model: nn.Module) -> None:
        buffers = {name: buf for name, buf in model.named_buffers()}
        if buffers:
            self.hvd.broadcast_parameters(buffers, root_rank=0)

    def step(self, optimizer: Any, scaler: torch.amp.GradScaler) -> None:
        if not scaler.is_enabled():
            optimizer.step()  # waits for the gradient allreduce started by the backward hooks
            return
        optimizer.synchronize()  # allreduce the scaled gradients, then unscale once
        scaler.unscale_(optimizer)
        with optimizer.skip_synchronize():
            scaler.step(optimizer)
        scaler.update()

    def broadcast_object(self, obj: Any) -> Any:
        self._broadcasts += 1  # the same name on every rank (Horovod's default is the object's type name)
        return self.hvd.broadcast_object(obj, root_rank=0, name=f"dlspark.broadcast.{self._broadcasts}")

    def allreduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.hvd.allreduce(tensor, op=self.hvd.Sum)

    def barrier(self) -> None:
        self.hvd.barrier()

    def close(self) -> None:
        self.hvd.shutdown()


class DDPStrategy(LocalStrategy):
    """``torch.distributed`` from the ``env://`` variables that torchrun / TorchDistributor set; DDP model."""

    name = "torch_distributor"

    def __init__(self) -> None:
        import torch.distributed as dist

        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"torch_distributor backend: {missing} not set; launch with TorchDistributor or torchrun, "
                               "or use train.backend=local for a single process")
        self.dist = dist
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=device_ids), optimizer  # broadcasts rank 0's parameters

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def allreduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        self.dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
        self.dist.destroy_process_group()


def make_strategy(backend: str) -> LocalStrategy:
    """The strategy for ``train.backend`` (``local`` | ``horovod`` | ``torch_distributor``)."""
    strategies = {"local": LocalStrategy, "horovod": HorovodStrategy, "torch_distributor": DDPStrategy}
    if backend not in strategies:
        raise ValueError(f"train.backend {backend!r} is unknown; use one of {sorted(strategies)}")
    return strategies[backend]()
