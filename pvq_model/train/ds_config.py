"""The DeepSpeed config of a run, built from the typed :class:`TrainConfig` (the one place where
DeepSpeed's JSON is written; ``infra/deepspeed/zero3_paper.json`` is this function's output for
``configs/paper.yaml``)."""

from __future__ import annotations

from typing import Any

from ..config import PVQConfig

GIB = 2**30


def bytes_per_grad_element(precision: str) -> int:
    return 2 if precision in ("bf16", "fp16") else 4


def reduce_bucket_elements(gib: float, precision: str) -> int:
    """DeepSpeed sizes reduce buckets in *elements*, the paper in bytes: 5 GiB of bf16 gradients
    is 5 * 2**30 / 2 = 2,684,354,560 elements (fp32: / 4)."""
    return int(gib * GIB) // bytes_per_grad_element(precision)


def build_ds_config(cfg: PVQConfig, world_size: int, *, persistence_threshold: int | None = None) -> dict[str, Any]:
    """DeepSpeed config for the generator (and, with the same settings, the discriminator).

    ``world_size`` is the actual number of ranks; the global batch is micro_batch x grad_accum x
    world_size (the paper's 1024 needs 64 ranks; :func:`pvq_model.config.validate` checks the
    configured product). ``persistence_threshold=0`` forces even tiny test models to be sharded.
    """
    t = cfg.train
    zero: dict[str, Any] = {
        "stage": t.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "reduce_bucket_size": reduce_bucket_elements(t.reduce_bucket_gib, t.precision),
        "stage3_gather_16bit_weights_on_model_save": False,
    }
    if persistence_threshold is not None:
        zero["stage3_param_persistence_threshold"] = persistence_threshold
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip,
        "bf16": {"enabled": t.precision == "bf16"},
        # BatchNorm3d buffers must be bf16 under the bf16 engine (DESIGN.md §5)
        "data_types": {"buffer_dtype": "bf16"} if t.precision == "bf16" else {},
        "zero_optimization": zero,
        "activation_checkpointing": {"partition_activations": False, "contiguous_memory_optimization": False},
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": t.lr,
                "warmup_num_steps": t.warmup_steps,
                "total_num_steps": t.steps,
                "warmup_type": "linear",
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
