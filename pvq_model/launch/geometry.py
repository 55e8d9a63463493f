"""The launched geometry (nodes x processes per node) and the overrides that make the config
describe it, so the resolved config a run records is the one that ran (the global batch stays
micro_batch x grad_accum x world size)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import PVQConfig

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = ("single", "local", "slurm", "deepspeed")
"""``single``: one process; ``local``: torchrun on this machine; ``slurm``: an sbatch script of srun +
torchrun; ``deepspeed``: the hostfile runner. The one list (flows.tasks checks against it)."""


class LaunchError(RuntimeError):
    """A launch that cannot be built or submitted; the message says what to change."""


@dataclass(frozen=True)
class Geometry:
    nnodes: int
    nproc_per_node: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def default_geometry(cfg: PVQConfig, launcher: str, nproc: int | None, nnodes: int | None) -> Geometry:
    """``nproc`` (processes per node) and ``nnodes`` from the command line, else from the config:
    ``single`` is 1 x 1; ``local`` is one node running the config's whole world size; ``slurm`` and
    ``deepspeed`` use ``train.nodes`` x ``train.gpus_per_node`` (the paper: 8 x 8)."""
    t = cfg.train
    if launcher == "single":
        if (nproc or 1) != 1 or (nnodes or 1) != 1:
            raise LaunchError("launcher 'single' runs one process: drop --nproc/--nnodes or use --launcher local")
        return Geometry(1, 1)
    if launcher == "local":
        if (nnodes or 1) != 1:
            raise LaunchError("launcher 'local' runs on this machine only (--nnodes 1); "
                              "use --launcher slurm or deepspeed for several nodes")
        return Geometry(1, nproc or t.world_size)
    if launcher in ("slurm", "deepspeed"):
        return Geometry(nnodes or t.nodes, nproc or t.gpus_per_node)
    raise LaunchError(f"unknown launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")


def geometry_overrides(cfg: PVQConfig, geo: Geometry) -> list[str]:
    """Overrides that make the config describe the launched geometry (empty when it already does)."""
    t = cfg.train
    if (t.nodes, t.gpus_per_node) == (geo.nnodes, geo.nproc_per_node):
        return []
    return [f"train.nodes={geo.nnodes}", f"train.gpus_per_node={geo.nproc_per_node}",
            f"train.world_size={geo.world_size}",
            f"train.global_batch={t.micro_batch * t.grad_accum * geo.world_size}"]
