"""Exponential moving average of the generator's parameters, in fp32, sharded like ZeRO-3.

``ema <- decay * ema + (1 - decay) * theta`` after every optimizer step, with theta the fp32 master
weights. Under ZeRO-3 every rank already holds the fp32 masters of its own partition of every
parameter (``deepspeed.utils.safe_get_local_fp32_param``: a view, no communication), so each rank
keeps the EMA of exactly that partition, on the device, and a step costs one local ``lerp`` per
parameter: nothing crosses the network or PCIe. The full EMA is gathered only to checkpoint and
export (:meth:`EMA.state_dict`, a collective that every rank calls). Parameters that are not
ZeRO-managed (a plain module) are averaged whole.

The result equals averaging the gathered full fp32 parameters element by element (the EMA is
elementwise and the partitions tile each parameter), which tests/train check on 2 ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _local_fp32(param: nn.Parameter) -> Tensor:
    """This rank's fp32 master partition of a ZeRO-3 parameter (1-D), or the whole parameter."""
    if hasattr(param, "ds_id"):
        from deepspeed.utils import safe_get_local_fp32_param

        return safe_get_local_fp32_param(param)
    return param.detach()


def full_fp32_param(param: nn.Parameter) -> Tensor:
    """The full fp32 value of a (possibly ZeRO-3 partitioned) parameter; a collective under ZeRO."""
    if hasattr(param, "ds_id"):
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(param).detach().float().clone()
    return param.detach().float().clone()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EMA:
    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.params = dict(module.named_parameters())
        self.names = list(self.params)
        self.shadow: dict[str, Tensor] = {n: _local_fp32(p).detach().float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self, module: nn.Module | None = None) -> None:
        """One EMA step from the current fp32 masters (local; ``module`` is accepted for the old
        call signature and must be the module given at construction)."""
        for name, param in self.params.items():
            self.shadow[name].mul_(self.decay).add_(_local_fp32(param).float(), alpha=1 - self.decay)

    def _full(self, name: str) -> Tensor:
        param, local = self.params[name], self.shadow[name]
        if not hasattr(param, "ds_id"):
            return local.detach().cpu().clone().view(param.shape)
        _, world = _world()
        size = param.ds_tensor.ds_numel  # every rank's partition size (the last one padded)
        padded = torch.zeros(size, dtype=torch.float32, device=local.device)
        padded[: local.numel()] = local
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        return torch.cat(parts)[: param.ds_numel].view(param.ds_shape).cpu()

    def state_dict(self) -> dict[str, Tensor]:
        """The full fp32 EMA of every parameter (CPU tensors). A collective under ZeRO-3: call it on
        every rank, in the same order."""
        return {n: self._full(n) for n in self.names}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore from a full :meth:`state_dict` (any world size wrote it): each rank keeps its slice."""
        missing = set(self.names) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        rank, _ = _world()
        for n in self.names:
            param, full = self.params[n], state[n].float().flatten()
            if hasattr(param, "ds_id"):
                size, count = param.ds_tensor.ds_numel, self.shadow[n].numel()
                self.shadow[n] = full[rank * size: rank * size + count].clone().to(self.shadow[n].device)
            else:
                self.shadow[n] = full.view(param.shape).clone().to(self.shadow[n].device)
