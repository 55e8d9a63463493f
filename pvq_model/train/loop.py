"""The training loop: generator and discriminator as two DeepSpeed ZeRO-3 engines, EMA, checkpoints,
exact resume, MLflow logging, export of the consolidated fp32 EMA weights.

Run it as ``python -m pvq_model.train --config CONFIG --out RUN`` (one process) or under torchrun /
srun / the deepspeed launcher (see :mod:`pvq_model.launch`): it reads RANK, WORLD_SIZE, LOCAL_RANK
and MASTER_ADDR/PORT from the environment.

The parts: :mod:`.setup` (process group, engines, loss), :mod:`.step` (one optimizer step),
:mod:`.checkpoint` (save, resume, export), :mod:`.tracking` (the MLflow run and its metrics).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..config import PVQConfig
from . import checkpoint as ckpt
from .data import training_batches
from .fit import seed_everything
from .setup import BatchSource, build_engines, build_loss, init_distributed, lone_process_env
from .step import agree, image_metrics, train_step
from .tracking import open_run


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)
    export_dir: Path | None = None
    run_id: str | None = None
    stopped: bool = False
    """True when a SIGTERM/SIGINT ended the run early (after a checkpoint)."""


class _Stop:
    """SIGTERM/SIGINT set a flag; the loop checkpoints and exits at the next step boundary."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def train(cfg: PVQConfig, out: Path, *, max_steps: int | None = None, resume: bool = True,
          data_version: str | None = None, batches: BatchSource | None = None) -> TrainResult:
    """Train until ``cfg.train.steps`` (or ``max_steps`` optimizer steps in this call).

    ``batches`` replaces :func:`~pvq_model.train.data.training_batches` as the micro-batch source
    (tests feed two parallel layouts the same global batches). Each step's generator forward and
    loss is :func:`pvq_model.train.fit.generator_step`, the plain loop's; the logged losses are means
    over the step's whole global batch (every rank, every accumulated micro-batch)."""
    with lone_process_env() as lone:
        return _train(cfg, Path(out), lone, max_steps, resume, data_version, batches or training_batches)


def _train(cfg: PVQConfig, out: Path, lone: bool, max_steps: int | None, resume: bool,
           data_version: str | None, batches: BatchSource) -> TrainResult:
    rank, world, device = init_distributed(cfg, out, lone)
    t = cfg.train
    ckpt_root = out / "checkpoints"
    seed_everything(t.seed)
    stop = _Stop()
    engines = build_engines(cfg, rank, world, batches, ckpt_root, resume)
    loss_fn = build_loss(cfg, device)
    logger = open_run(cfg, out, engines.ds_config, world=world, resumed_from=engines.tag,
                      data_version=data_version) if rank == 0 else None

    start = engines.start_step
    end = t.steps if max_steps is None else min(t.steps, start + max_steps)
    micro_batches = batches(cfg, rank, world, start * t.grad_accum)
    result = TrainResult(step=start, run_id=logger.run_id if logger else None)
    bar = tqdm(total=end - start, desc="train", disable=rank != 0, dynamic_ncols=True)
    status = "FAILED"
    try:
        for step in range(start, end):
            tic = time.perf_counter()
            lr = engines.g.get_lr()[0]  # the rate this step's update uses
            res = train_step(engines, loss_fn, micro_batches, step, cfg, device)
            result.losses.append(res.parts["loss"])
            result.step = step + 1
            dt = time.perf_counter() - tic
            if logger is not None and (step % t.log_every == 0 or step + 1 == end):
                grad_norm = engines.g.get_global_grad_norm()
                metrics = {**res.parts, "lr": lr, "step_time_s": dt,
                           "data_wait_fraction": res.data_wait_s / max(dt, 1e-9),
                           "samples_per_s": t.micro_batch * t.grad_accum * world / max(dt, 1e-9)}
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                if t.image_metrics_every and step % t.image_metrics_every == 0:
                    metrics.update(image_metrics(res.x, res.recon, res.mask))
                logger.log_metrics(metrics, step)
            bar.update(1)
            bar.set_postfix(loss=f"{res.parts['loss']:.4f}", bucket=res.batch["bucket"], frames=res.batch["frames"])
            stop_now = agree(stop.requested)
            if (step + 1) % t.checkpoint_every == 0 or step + 1 == end or stop_now:
                ckpt.save(ckpt_root, step + 1, engines.g, engines.d, engines.ema, rank, keep=t.keep_checkpoints,
                          pinned=t.pin_checkpoints, layout=ckpt.data_layout(cfg))
            if stop_now:
                status = "KILLED"
                result.stopped = True
                return result
        result.export_dir = ckpt.export_ema(cfg, engines.ema, out / "export", rank, extra={"step": result.step})
        if logger is not None:
            logger.log_artifacts(result.export_dir, "export")
        status = "FINISHED"
        return result
    finally:
        bar.close()
        if logger is not None:
            logger.close(status)
