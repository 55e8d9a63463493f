"""The training loop: generator and discriminator as two DeepSpeed ZeRO-3 engines, EMA, checkpoints,
exact resume, MLflow logging, export of the consolidated fp32 EMA weights.

Run it as ``python -m pvq_model.train --config CONFIG --out RUN`` (one process) or under torchrun /
srun / the deepspeed launcher (see ``launch.py``): it reads RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT from the environment.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..config import PVQConfig
from ..discriminator import Discriminator3D
from ..fit import generator_step, seed_everything
from ..losses import PVQLoss
from ..perceptual import build_lpips
from ..vae import PVQVAE
from . import checkpoint as ckpt
from .data import training_batches
from .ds_config import build_ds_config
from .ema import EMA
from .tracking import MLflowLogger, git_state, package_versions


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(cfg: PVQConfig, run_dir: Path) -> tuple[int, int, torch.device]:
    """Initialise torch.distributed (gloo on CPU, nccl on GPU) and hand it to DeepSpeed.

    Under a launcher (RANK in the environment) this is the usual env:// rendezvous. A lone
    process becomes a world of one through a *file* store in the run directory: no TCP store, so
    no name lookups (c10d resolves "::ffff:127.0.0.1" by name, which on hosts without IPv6 lines in
    /etc/hosts becomes a DNS query; see infra/local/isolated.sh for multi-process runs)."""
    cuda = torch.cuda.is_available()
    timeout = datetime.timedelta(seconds=cfg.train.dist_timeout_s)
    backend = "nccl" if cuda else "gloo"
    if "RANK" not in os.environ and not dist.is_initialized():
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        run_dir.mkdir(parents=True, exist_ok=True)
        store = run_dir / ".dist_store"
        store.unlink(missing_ok=True)
        dist.init_process_group(backend, init_method=store.resolve().as_uri(), rank=0, world_size=1,
                                timeout=timeout)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), device


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


def _broadcast_module(module: torch.nn.Module) -> None:
    if dist.get_world_size() > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


BatchSource = Callable[[PVQConfig, int, int, int], Iterator[dict]]
"""``(cfg, rank, world_size, start_micro_step) -> micro-batches`` (dicts with ``video``, ``mask``,
``bucket``, ``frames``), like :func:`pvq_model.train.data.training_batches`."""


def train(cfg: PVQConfig, out: Path, *, max_steps: int | None = None, resume: bool = True,
          data_version: str | None = None, batches: BatchSource | None = None) -> TrainResult:
    """Train until ``cfg.train.steps`` (or ``max_steps`` optimizer steps in this call).

    ``batches`` replaces :func:`~pvq_model.train.data.training_batches` as the micro-batch source
    (tests feed two parallel layouts the same global batches). Each step's generator forward and
    loss is :func:`pvq_model.fit.generator_step`, the plain loop's; the logged losses are means over
    the step's whole global batch (every rank, every accumulated micro-batch)."""
    batches = batches or training_batches
    out = Path(out)
    rank, world, device = init_distributed(cfg, out)
    t = cfg.train
    ckpt_root = out / "checkpoints"
    seed_everything(t.seed)
    stop = _Stop()

    # ---- models (identical init on every rank: same seed; data_init on rank 0's batch, broadcast)
    model = PVQVAE(cfg)
    disc = Discriminator3D(cfg.discriminator, cfg.model.in_channels)
    bf16 = t.precision == "bf16"
    start_step = 0
    tag = ckpt.latest(ckpt_root) if resume else None
    if tag is None:
        first = next(batches(cfg, 0, world, 0))
        model.data_init(first["video"])
        _broadcast_module(model)
    ds_cfg = build_ds_config(cfg, world, persistence_threshold=t.persistence_threshold)
    adam = dict(lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)
    engine_g, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.Adam(model.parameters(), **adam),
                                             config=ds_cfg)
    engine_d, _, _, _ = deepspeed.initialize(model=disc, optimizer=torch.optim.Adam(disc.parameters(), **adam),
                                             config=ds_cfg)
    # DeepSpeed's WarmupDecayLR starts one iteration behind (optimizer step s would use lr(s - 1));
    # align it so that step s uses exactly lr(s) of the schedule (tested against schedule.lr_at).
    for engine in (engine_g, engine_d):
        engine.lr_scheduler.step(0)
    ema = EMA(engine_g.module, t.ema_decay)
    if tag is not None:
        start_step = ckpt.load(ckpt_root, tag, engine_g, engine_d, ema, rank)

    teacher = None
    if cfg.alignment.weight > 0:
        from ..alignment import load_teacher

        teacher = load_teacher(cfg.alignment.teacher_path, device)
    loss_fn = PVQLoss(cfg, lpips=build_lpips(cfg.lpips, device), teacher=teacher)

    logger = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "deepspeed_config.json").write_text(json.dumps(ds_cfg, indent=2))
        uri = t.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"
        local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
        # a resumed run continues its MLflow run (same store): one run per run directory, not one per resume
        run_file = out / "mlflow_run.json"
        store = hashlib.sha256(uri.encode()).hexdigest()[:16]
        prev = json.loads(run_file.read_text()) if tag is not None and run_file.is_file() else {}
        logger = MLflowLogger(uri, t.mlflow_experiment, run_name=f"{cfg.name}-{out.name}",
                              artifact_root=out / "mlartifacts" if local else None,
                              resume_run_id=prev.get("run_id") if prev.get("store") == store else None)
        run_file.write_text(json.dumps({"run_id": logger.run_id, "store": store}))
        tags = {**git_state(), **data_tags(t.data_path, data_version or t.data_version),
                "seed": str(t.seed), "world_size": str(world), "resumed_from": tag or "",
                **{f"version.{k}": v for k, v in package_versions().items()}}
        logger.log_setup(cfg.to_dict(), ds_cfg, tags)

    end = t.steps if max_steps is None else min(t.steps, start_step + max_steps)
    micro_batches = batches(cfg, rank, world, start_step * t.grad_accum)
    result = TrainResult(step=start_step, run_id=logger.run_id if logger else None)
    bar = tqdm(total=end - start_step, desc="train", disable=rank != 0, dynamic_ncols=True)
    heads = engine_g.module.alignment
    status = "FAILED"
    try:
        for step in range(start_step, end):
            tic = time.perf_counter()
            lr = engine_g.get_lr()[0]  # the rate this step's update uses
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
            ema.update(engine_g.module)
            parts_sum = _mean_over_ranks(parts_sum)
            result.losses.append(parts_sum["loss"])
            result.step = step + 1
            dt = time.perf_counter() - tic
            if logger is not None and (step % t.log_every == 0 or step + 1 == end):
                grad_norm = engine_g.get_global_grad_norm()
                metrics = {**parts_sum, "lr": lr, "step_time_s": dt,
                           "data_wait_fraction": wait / max(dt, 1e-9),
                           "samples_per_s": t.micro_batch * t.grad_accum * world / max(dt, 1e-9)}
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                if t.image_metrics_every and step % t.image_metrics_every == 0:
                    metrics.update(image_metrics(x, out_g.recon, mask))
                logger.log_metrics(metrics, step)
            bar.update(1)
            bar.set_postfix(loss=f"{parts_sum['loss']:.4f}", bucket=batch["bucket"], frames=batch["frames"])
            stop_now = _agree(stop.requested)
            if (step + 1) % t.checkpoint_every == 0 or step + 1 == end or stop_now:
                ckpt.save(ckpt_root, step + 1, engine_g, engine_d, ema, rank, keep=t.keep_checkpoints,
                          pinned=t.pin_checkpoints)
            if stop_now:
                status = "KILLED"
                result.stopped = True
                return result
        result.export_dir = export_ema(cfg, ema, out / "export", rank, extra={"step": result.step})
        if logger is not None:
            logger.log_artifacts(result.export_dir, "export")
        status = "FINISHED"
        return result
    finally:
        bar.close()
        if logger is not None:
            logger.close(status)


@torch.no_grad()
def image_metrics(x: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """PSNR / SSIM of a training batch's reconstructions over its valid frames (rank 0's batch)."""
    from ..metrics import frame_psnr, frame_ssim
    from ..perceptual import frames_of

    fx, fy = frames_of(x.float(), mask), frames_of(recon.float(), mask)
    return {"train/psnr": float(frame_psnr(fx, fy).mean()), "train/ssim": float(frame_ssim(fx, fy).mean())}


def data_tags(data_path: str | None, version: str | None = None) -> dict[str, str]:
    """``data_path``, ``data_version`` (the dataset's LATEST unless given) and ``data_index_sha256``
    (hash of that version's shard index, which lists every shard's sha256)."""
    if data_path is None:
        return {"data_path": "synthetic", "data_version": "synthetic", "data_index_sha256": ""}
    import hashlib

    from data_prep import manifest, storage

    version = version or manifest.latest_version(data_path) or "none"
    try:
        digest = hashlib.sha256(storage.read_bytes(storage.join(data_path, version, "index.parquet"))).hexdigest()
    except (OSError, storage.StorageError):
        digest = ""
    return {"data_path": str(data_path), "data_version": version, "data_index_sha256": digest}


def _mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
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


def _agree(flag: bool) -> bool:
    """True on every rank if any rank got a stop signal (so all ranks checkpoint together)."""
    if dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t)
    return bool(t.item() > 0)


def export_ema(cfg: PVQConfig, ema: EMA, directory: Path, rank: int, extra: dict | None = None) -> Path:
    """Consolidated fp32 EMA weights as a ``PVQVAE.from_pretrained`` directory (rank 0 writes;
    every rank waits at the barrier so none times out)."""
    ema_state = ema.state_dict()  # a collective: the sharded EMA is gathered on every rank
    if rank == 0:
        model = PVQVAE(cfg)
        state = model.state_dict()
        state.update({k: v for k, v in ema_state.items() if k in state})
        model.load_state_dict(state)
        tmp = directory.with_name(directory.name + ".tmp")
        model.save_pretrained(tmp, extra=extra)
        if directory.exists():
            import shutil

            shutil.rmtree(directory)
        tmp.rename(directory)
    ckpt.barrier()
    return directory
