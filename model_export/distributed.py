"""The process group of a data-parallel run under torchrun: who this rank is, and the few
collectives training needs.

``World.from_env()`` reads torchrun's RANK, WORLD_SIZE and LOCAL_RANK; without them (or with a
world of one) it returns None and training runs in one process with no group, exactly as
before. Backend: NCCL on CUDA (one GPU per local rank), gloo on CPU.

Gradients are summed by hand rather than through DistributedDataParallel: the energy model and
the two-tower noise share one module and one embedding table, and the noise-only pre-training
phase leaves the energy weights without gradients, which DDP would have to be told about
(``find_unused_parameters``) every step. Each rank backpropagates its share of the GLOBAL loss
(its sums divided by the all-reduced counts), so the summed gradient is the one-process
gradient of the same global batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    """This process's rank, 0 .. size - 1; rank 0 writes every file of the run."""
    size: int
    """Number of processes; each takes rows ``rank::size`` of every global batch."""
    local_rank: int
    """Rank on this node: the CUDA device this process uses."""

    @classmethod
    def from_env(cls) -> World | None:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return None
        return cls(rank=int(os.environ["RANK"]), size=size,
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def start(self) -> bool:
        """Join the process group (rendezvous from torchrun's MASTER_ADDR / MASTER_PORT);
        True when this call made it (and so should end it)."""
        if dist.is_initialized():
            return False
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)  # before NCCL picks a device for barriers
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return True

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        dist.barrier()

    @contextmanager
    def writer_first(self) -> Iterator[None]:
        """Rank 0 runs the block (writing caches such as tokens.npz) before the others, who
        then find the files written."""
        if not self.is_writer:
            self.barrier()
        yield
        if self.is_writer:
            self.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is True on one (a shared decision to stop)."""
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum_grads(self, params: list[torch.Tensor], extra: torch.Tensor) -> torch.Tensor:
        """Sum the gradients of ``params`` over ranks in place, with ``extra`` (loss terms to
        log) riding in the same buffer; returns the summed ``extra``.

        A parameter with a gradient on some ranks only gets zeros on the others, so every rank
        steps the same set of parameters.
        """
        device = extra.device
        present = torch.tensor([float(p.grad is not None) for p in params], device=device)
        present = self.sum(present)
        used = [p for p, n in zip(params, present.tolist()) if n > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in used if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [extra.to(grads[0].dtype if grads
                                                                     else extra.dtype)])
        self.sum(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[offset:].to(extra.dtype)

    def gather_objects(self, obj: object) -> list[object]:
        out: list[object] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def max_param_difference(self, model: torch.nn.Module) -> float:
        """The largest |w_r - w_0| over all weights and ranks: 0 when the replicas agree."""
        flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        diff = (flat - reference).abs().max().reshape(1)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff.item())

    def close(self) -> None:
        dist.destroy_process_group()
