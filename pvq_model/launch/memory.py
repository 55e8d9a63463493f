"""The dry run's memory estimate: DeepSpeed's ZeRO-3 model-state estimator on a meta-device model."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from ..config import PVQConfig
from ..train.ds_config import GIB
from .geometry import Geometry


@dataclass(frozen=True)
class ModelStates:
    name: str
    total_params: int
    largest_layer_params: int
    gpu_bytes: int
    """ZeRO-3 model states per GPU without offload: fp32 master + Adam moments + bf16 params and
    grads, all sharded (18 bytes per parameter / world size) + the largest layer gathered."""


def count_params(module) -> tuple[int, int]:
    """(total parameters, largest single-module parameters); works on the meta device, where
    DeepSpeed's own ``model_to_params`` would merge all tensors (their data_ptr is 0)."""
    total = sum(p.numel() for p in module.parameters())
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules()), default=0)
    return total, largest


def memory_estimate(cfg: PVQConfig, geo: Geometry) -> tuple[list[ModelStates], str]:
    """Per-GPU ZeRO-3 model-state memory of the generator and the discriminator (each its own
    engine) on ``geo``, and DeepSpeed's estimator table (with its offload options) for both."""
    import torch
    from deepspeed.runtime.zero.stage3 import (estimate_zero3_model_states_mem_needs,
                                               estimate_zero3_model_states_mem_needs_all_cold)

    from ..discriminator import Discriminator3D
    from ..vae import PVQVAE

    with torch.device("meta"):
        models = {"generator": PVQVAE(cfg), "discriminator": Discriminator3D(cfg.discriminator)}
    rows = []
    for name, model in models.items():
        total, largest = count_params(model)
        _, gpu_bytes, _ = estimate_zero3_model_states_mem_needs(
            total, largest, num_gpus_per_node=geo.nproc_per_node, num_nodes=geo.nnodes,
            cpu_offload=False, cpu_offload_params=False, zero_init=True)
        rows.append(ModelStates(name, total, largest, gpu_bytes))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        estimate_zero3_model_states_mem_needs_all_cold(
            total_params=sum(r.total_params for r in rows),
            largest_layer_params=max(r.largest_layer_params for r in rows),
            num_gpus_per_node=geo.nproc_per_node, num_nodes=geo.nnodes)
    return rows, buf.getvalue()


def format_memory(rows: list[ModelStates], table: str, geo: Geometry) -> str:
    lines = [f"memory per GPU, ZeRO-3 model states on {geo.nnodes} node(s) x {geo.nproc_per_node} "
             f"= {geo.world_size} GPUs (no offload; activations not included):"]
    for r in rows:
        lines.append(f"  {r.name:<14} {r.total_params / 1e6:9.2f}M params, largest layer "
                     f"{r.largest_layer_params / 1e6:7.2f}M: {r.gpu_bytes / GIB:8.3f} GiB")
    total = sum(r.gpu_bytes for r in rows)
    lines.append(f"  {'total':<14} {sum(r.total_params for r in rows) / 1e6:9.2f}M params"
                 f"{'':>25}{total / GIB:8.3f} GiB")
    gen = rows[0].total_params
    lines.append(f"  + host memory per rank: the fp32 EMA of the generator, kept whole on every rank: "
                 f"{4 * gen / GIB:.3f} GiB")
    lines.append("DeepSpeed estimator (generator + discriminator):")
    lines += ["  " + line for line in table.rstrip().splitlines()]
    return "\n".join(lines)
