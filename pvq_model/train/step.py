"""One optimizer step of the GAN: ``grad_accum`` micro-batches, each a generator update (the
discriminator frozen) and, once the adversarial loss is on, a discriminator update; then the EMA.
The logged values are means over the step's whole global batch (every rank, every micro-batch)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..config import PVQConfig
from ..losses import PVQLoss
from .fit import generator_step
from .setup import Engines


@dataclass
class StepResult:
    parts: dict[str, float]
    """Loss parts and quantizer stats, averaged over the global batch; ``loss`` is the total."""
    batch: dict
    """The last micro-batch (its ``bucket`` and ``frames`` go to the progress bar)."""
    x: torch.Tensor
    recon: torch.Tensor
    mask: torch.Tensor
    data_wait_s: float
    """Seconds spent waiting for the micro-batches."""


def train_step(engines: Engines, loss_fn: PVQLoss, micro_batches: Iterator[dict], step: int, cfg: PVQConfig,
               device: torch.device) -> StepResult:
    """Run optimizer step ``step``; the last micro-batch's input ``x`` (B, C, T, H, W), its
    reconstruction and mask (B, T) come back for the image metrics."""
    t = cfg.train
    bf16 = t.precision == "bf16"
    engine_g, engine_d = engines.g, engines.d
    heads = engine_g.module.alignment
    wait = 0.0
    parts_sum: dict[str, float] = {}
    for _ in range(t.grad_accum):
        w0 = time.perf_counter()
        batch = next(micro_batches)
        wait += time.perf_counter() - w0
        x = batch["video"].to(device)
        mask = batch["mask"].to(device)
        xin = x.bfloat16() if bf16 else x
        # generator step, discriminator frozen (ZeRO-3 asserts otherwise)
        disc_params = list(engine_d.module.parameters())
        for p in disc_params:
            p.requires_grad_(False)
        adv = loss_fn.adversarial_active(step)
        loss, parts, out_g = generator_step(engine_g, loss_fn, x, mask, step, model_input=xin,
                                            discriminator=engine_d if adv else None, heads=heads)
        engine_g.backward(loss)
        engine_g.step()
        for p in disc_params:
            p.requires_grad_(True)
        if adv:
            d_loss, d_parts = loss_fn.discriminator(engine_d, xin, out_g.recon.detach())
            engine_d.backward(d_loss)
            engine_d.step()
            parts = {**parts, "d_loss": d_parts["d_loss"]}
        for k, v in {**parts, **{f"quant/{k}": v for k, v in out_g.quant.stats.items()}}.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + float(v.detach()) / t.grad_accum
        parts_sum["loss"] = parts_sum.get("loss", 0.0) + float(loss.detach()) / t.grad_accum
    engines.ema.update(engine_g.module)
    return StepResult(mean_over_ranks(parts_sum), batch, x, out_g.recon, mask, wait)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each logged value averaged over the ranks (float64, one all-reduce), so a step's loss is
    that of its global batch, not rank 0's share: 2 ranks x 1 micro-batch log what 1 rank x 2
    accumulated micro-batches of the same clips log. Every rank has the same keys (same code path)."""
    world = dist.get_world_size()
    if world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}


def agree(flag: bool) -> bool:
    """True on every rank if any rank got a stop signal (so all ranks checkpoint together)."""
    if dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t)
    return bool(t.item() > 0)


@torch.no_grad()
def image_metrics(x: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """PSNR / SSIM of a training batch's reconstructions over its valid frames (rank 0's batch);
    ``x``, ``recon``: (B, C, T, H, W), ``mask``: (B, T)."""
    from ..metrics import frame_psnr, frame_ssim
    from ..perceptual import frames_of

    fx, fy = frames_of(x.float(), mask), frames_of(recon.float(), mask)
    return {"train/psnr": float(frame_psnr(fx, fy).mean()), "train/ssim": float(frame_ssim(fx, fy).mean())}
