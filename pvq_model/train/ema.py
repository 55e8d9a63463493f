"""Exponential moving average of the generator's parameters, in fp32, under ZeRO-3.

``ema <- decay * ema + (1 - decay) * theta`` after every optimizer step, with theta the fp32 master
weights gathered by ``deepspeed.utils.safe_get_full_fp32_param`` (a collective: every rank calls it
for every parameter, in the same order). Every rank keeps the full EMA, so rank 0 can save and
export it without another gather.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def full_fp32_param(param: nn.Parameter) -> Tensor:
    """The full fp32 value of a (possibly ZeRO-3 partitioned) parameter; a collective under ZeRO."""
    if hasattr(param, "ds_id"):
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(param).detach().float().clone()
    return param.detach().float().clone()


class EMA:
    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, _ in module.named_parameters()]
        self.shadow: dict[str, Tensor] = {n: full_fp32_param(p).cpu() for n, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, param in module.named_parameters():
            self.shadow[name].mul_(self.decay).add_(full_fp32_param(param).cpu(), alpha=1 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        self.shadow = {n: state[n].float().clone() for n in self.names}
