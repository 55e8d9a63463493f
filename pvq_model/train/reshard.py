"""Resume a run on another world size: re-partition a ZeRO-3 checkpoint written by W ranks into the
one that W' ranks would have written, so that an 8x8-GPU run continues on 4x8 after losing nodes.

DeepSpeed refuses to load a ZeRO checkpoint on another data-parallel world size ("Automatic
adjustment of ZeRO's optimizer state partitioning with a new world size is not currently
supported", DeepSpeed #2898). Its answer is the *universal* checkpoint (``ds_to_universal``, then
``"checkpoint": {"load_universal": true}``, which loads through another code path). This module is
the equivalent that keeps the trainer's normal load path: it writes an ordinary ZeRO-3 checkpoint
for W' ranks, which :func:`pvq_model.train.checkpoint.load` then restores as it restores any other.

What a ZeRO-3 checkpoint holds per rank, and what the conversion does with it:

* ``*zero_pp_rank_R_mp_rank_00_optim_states.pt``: rank R's flat fp32 master partition and its Adam
  ``exp_avg`` / ``exp_avg_sq``. Each parameter of ``numel`` n is split into W pieces of
  ``ceil(n / W)`` elements (the last zero-padded), and a rank's flat tensor is its pieces of every
  parameter, in the order of ``param_shapes``. The full fp32 value of every parameter is put back
  together from the W files and cut again into W' pieces: values are only moved, never computed,
  so the resumed masters and moments equal the saved ones bit for bit. Adam's step count, the loss
  scaler and the param-group hyper-parameters are the same on every rank and are copied.
* ``zero_pp_rank_R_mp_rank_00_model_states.pt``: the LR scheduler, the step counters, the client
  state (our ``step``) and empty placeholders of the partitioned weights: copied from rank 0, with
  ``dp_world_size`` (and the DeepSpeed config's batch sizes) set to the new layout.
* the EMA (``ema/TAG.safetensors``) is already the full fp32 EMA (:mod:`.ema` gathers it to save
  and slices it to load on any world size): copied unchanged.
* ``rng/TAG/rankR.pt``: rank R keeps its own RNG state; a rank that did not exist takes the state
  of rank ``R mod W`` (the trainer's data and augmentation draws do not use these states).

The global batch stays the same: ``grad_accum`` becomes ``global_batch / (micro_batch x W')`` (an
error names the fix when that is not an integer), so the optimizer step, the LR schedule and the
data (:mod:`pvq_model.train.data`: a step's samples depend only on its slots) continue exactly.

The result is a new tag ``TAG-worldW'`` beside the original (which is kept), and ``LATEST`` then
names it. ``pvq train --resume-from RUN --world-size N`` runs :func:`reshard` and prints
:func:`describe`; ``python -m pvq_model.train.reshard RUN N [--nnodes K]`` converts only and prints
the ``--set`` overrides (:func:`resume_overrides`) to resume with.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt

ENGINES = ("g", "d")
_OPTIM = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


class ReshardError(RuntimeError):
    """A checkpoint that cannot be converted; the message names the file and the fix."""


def saved_world_size(root: Path, tag: str) -> int:
    """How many ranks wrote checkpoint ``tag`` under ``root`` (its per-rank RNG files)."""
    files = list((Path(root) / "rng" / tag).glob("rank*.pt"))
    if not files:
        raise FileNotFoundError(f"{Path(root) / 'rng' / tag}: no per-rank RNG files; not a checkpoint of this trainer")
    return len(files)


def check_world_size(root: Path, tag: str, world: int) -> None:
    """Raise with the conversion command when ``tag`` was written by another number of ranks."""
    saved = saved_world_size(root, tag)
    if saved != world:
        run = Path(root).parent
        raise ReshardError(
            f"{Path(root) / tag}: checkpoint written by {saved} rank(s), this run has {world}; ZeRO-3 "
            f"partitions cannot be loaded on another world size as they are. Convert it first: "
            f"`pvq train --resume-from {run} --world-size {world} ...` (or "
            f"`python -m pvq_model.train.reshard {run} {world}`), or resume on {saved} rank(s)")


@dataclass
class EngineReport:
    engine: str
    params: int
    elements: int
    """fp32 elements of the full parameters (each of masters, exp_avg, exp_avg_sq)."""
    old_partition: int
    """elements per rank before (flat fp32 partition incl. padding) ..."""
    new_partition: int
    """... and after."""
    adam_step: int
    moments: bool
    """whether the optimizer had Adam moments yet (not before its first step)."""


@dataclass
class ReshardReport:
    src_tag: str
    tag: str
    step: int
    old_world: int
    new_world: int
    global_batch: int
    micro_batch: int
    old_accum: int
    new_accum: int
    engines: list[EngineReport] = field(default_factory=list)
    ema_params: int = 0

    @property
    def overrides(self) -> list[str]:
        """The batch overrides of the new layout; :func:`resume_overrides` adds ``train.nodes`` and
        ``train.gpus_per_node``, without which the config is refused (world_size != nodes x gpus_per_node)."""
        return [f"train.world_size={self.new_world}", f"train.grad_accum={self.new_accum}",
                f"train.global_batch={self.global_batch}"]


def new_grad_accum(global_batch: int, micro_batch: int, world: int) -> int:
    """``grad_accum`` that keeps ``global_batch`` on ``world`` ranks of ``micro_batch``."""
    if world < 1 or global_batch % (micro_batch * world):
        raise ReshardError(
            f"global batch {global_batch} is not micro_batch {micro_batch} x grad_accum x {world} ranks for "
            f"any whole grad_accum; choose a world size that divides {global_batch // micro_batch}, or change "
            f"train.micro_batch (then the batch per rank changes too)")
    return global_batch // (micro_batch * world)


def _rank_files(d: Path, pattern: re.Pattern) -> dict[int, Path]:
    found = {}
    for p in d.iterdir():
        m = pattern.match(p.name)
        if m:
            found[int(m.group(2))] = p
    return dict(sorted(found.items()))


def _load(path: Path) -> dict:
    # weights_only=False: DeepSpeed pickles its enums and loss scaler; the caller checked the folder
    # (checkpoint.check_trusted), as checkpoint.load does before DeepSpeed's own torch.load
    return torch.load(path, map_location="cpu", weights_only=False)


def _full(flats: list[torch.Tensor], numels: list[int]) -> list[torch.Tensor]:
    """Full 1-D tensors of every parameter from the W ranks' flat partitions."""
    world = len(flats)
    out, offset = [], 0
    for n in numels:
        part = math.ceil(n / world)
        out.append(torch.cat([f[offset: offset + part] for f in flats])[:n].clone())
        offset += part
    if offset != flats[0].numel():
        raise ReshardError(f"flat partition of {flats[0].numel()} elements, expected {offset} from param_shapes "
                           f"(padding or sub-groups this converter does not know)")
    return out


def _partition(full: list[torch.Tensor], world: int) -> list[torch.Tensor]:
    """The W' ranks' flat partitions of the full parameters (each piece ceil(n / W'), zero-padded)."""
    pieces: list[list[torch.Tensor]] = [[] for _ in range(world)]
    for t in full:
        part = math.ceil(t.numel() / world)
        padded = torch.zeros(part * world, dtype=t.dtype)
        padded[: t.numel()] = t
        for r in range(world):
            pieces[r].append(padded[r * part: (r + 1) * part])
    return [torch.cat(p) for p in pieces]


def _ds_config(cfg: dict, accum: int, micro: int, world: int) -> dict:
    cfg = copy.deepcopy(cfg)
    if isinstance(cfg, dict) and "train_batch_size" in cfg:
        cfg["gradient_accumulation_steps"] = accum
        cfg["train_batch_size"] = micro * accum * world
    return cfg


def reshard_engine(src: Path, dst: Path, new_world: int, new_accum: int) -> EngineReport:
    """Write the ZeRO-3 checkpoint folder ``dst`` for ``new_world`` ranks from ``src`` (module docstring)."""
    optim_files = _rank_files(src, _OPTIM)
    model_files = _rank_files(src, re.compile(r"^()zero_pp_rank_(\d+)_mp_rank_00_model_states\.pt$"))
    old_world = len(optim_files)
    if not optim_files or list(optim_files) != list(range(old_world)) or list(model_files) != list(range(old_world)):
        raise ReshardError(f"{src}: expected ZeRO-3 files of ranks 0..N-1, found optimizer states of ranks "
                           f"{list(optim_files)} and model states of ranks {list(model_files)}")
    model0 = _load(model_files[0])
    if model0.get("mp_world_size", 1) != 1 or len(model0.get("frozen_param_shapes") or {}):
        raise ReshardError(f"{src}: model parallelism or frozen parameters; only plain ZeRO-3 data parallelism "
                           f"is converted")
    wholes = [_load(optim_files[r]) for r in range(old_world)]
    optims = [w["optimizer_state_dict"] for w in wholes]
    groups = model0["param_shapes"]
    if int(optims[0]["zero_stage"]) != 3 or len(optims[0]["fp32_flat_groups"]) != len(groups):
        raise ReshardError(f"{src}: not one ZeRO-3 sub-group per parameter group (zero_stage "
                           f"{int(optims[0]['zero_stage'])}, {len(optims[0]['fp32_flat_groups'])} flat groups for "
                           f"{len(groups)} parameter groups); raise zero_optimization.sub_group_size or use "
                           f"DeepSpeed's ds_to_universal")
    sub_group_size = int(model0["ds_config"].get("zero_optimization", {}).get("sub_group_size", 1e9))
    new = [{**optims[0], "fp32_flat_groups": list(optims[0]["fp32_flat_groups"]),
            "optimizer_state_dict": {**optims[0]["optimizer_state_dict"],
                                     "state": {g: dict(v) for g, v in optims[0]["optimizer_state_dict"]["state"].items()}}}
           for _ in range(new_world)]
    elements = params = new_partition = 0
    for g, shapes in enumerate(groups):
        numels = [math.prod(s) for s in shapes.values()]
        params += len(numels)
        elements += sum(numels)
        stepped = all(g in o["optimizer_state_dict"]["state"] for o in optims)  # no Adam state before a step
        for key in ("fp32", "exp_avg", "exp_avg_sq") if stepped else ("fp32",):
            flats = [o["fp32_flat_groups"][g] if key == "fp32" else o["optimizer_state_dict"]["state"][g][key]
                     for o in optims]
            parts = _partition(_full(flats, numels), new_world)
            for r, part in enumerate(parts):
                if key == "fp32":
                    new[r]["fp32_flat_groups"][g] = part
                else:
                    new[r]["optimizer_state_dict"]["state"][g][key] = part
        new_partition += new[0]["fp32_flat_groups"][g].numel()
        if new[0]["fp32_flat_groups"][g].numel() > sub_group_size:
            raise ReshardError(f"{src}: a rank's partition of {new[0]['fp32_flat_groups'][g].numel()} elements on "
                               f"{new_world} ranks exceeds sub_group_size {sub_group_size}: DeepSpeed would split "
                               f"it into sub-groups; use DeepSpeed's ds_to_universal")
    micro = int(model0["ds_config"]["train_micro_batch_size_per_gpu"])
    dst.mkdir(parents=True, exist_ok=True)
    prefix = _OPTIM.match(optim_files[0].name).group(1) or ""
    whole = wholes[0]
    for r in range(new_world):
        new[r]["partition_count"] = new_world
        out = {**whole, "optimizer_state_dict": new[r], "ds_config": _ds_config(whole.get("ds_config"), new_accum,
                                                                               micro, new_world)}
        torch.save(out, dst / f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
        model = {**model0, "dp_world_size": new_world,
                 "ds_config": _ds_config(model0["ds_config"], new_accum, micro, new_world)}
        torch.save(model, dst / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
    step = optims[0]["optimizer_state_dict"]["state"].get(0, {}).get("step", 0)
    return EngineReport(src.parent.name, params, elements, sum(f.numel() for f in optims[0]["fp32_flat_groups"]),
                        new_partition, int(step), stepped)


def reshard(root: Path, new_world: int, tag: str | None = None, *, write: bool = True) -> ReshardReport:
    """Convert checkpoint ``tag`` (default: ``LATEST``) under ``root`` (``RUN/checkpoints``) to
    ``new_world`` ranks as the new tag ``TAG-world{N}``, then point ``LATEST`` at it. Returns what
    was converted. A checkpoint already written by ``new_world`` ranks is left as it is; with
    ``write=False`` (a dry run) nothing is written and the report has no engine rows."""
    root = Path(root)
    tag = tag or ckpt.latest(root)
    if tag is None:
        raise FileNotFoundError(f"{root}: no checkpoint (no LATEST) to resume from")
    ckpt.check_trusted(root)
    old_world = saved_world_size(root, tag)
    model0 = _load(root / "g" / tag / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    ds = model0["ds_config"]
    micro, old_accum = int(ds["train_micro_batch_size_per_gpu"]), int(ds["gradient_accumulation_steps"])
    global_batch = int(ds["train_batch_size"])
    new_accum = new_grad_accum(global_batch, micro, new_world)
    base = tag.split("-world")[0]
    report = ReshardReport(tag, tag if old_world == new_world else f"{base}-world{new_world}", int(model0["step"]),
                           old_world, new_world, global_batch, micro, old_accum, new_accum)
    if old_world == new_world or not write:
        return report
    tmp = {sub: root / sub / f".{report.tag}.tmp" for sub in ("g", "d", "rng")}
    for p in tmp.values():
        shutil.rmtree(p, ignore_errors=True)
    for engine in ENGINES:
        report.engines.append(reshard_engine(root / engine / tag, tmp[engine], new_world, new_accum))
    tmp["rng"].mkdir(parents=True)
    for r in range(new_world):
        shutil.copyfile(root / "rng" / tag / f"rank{r % old_world}.pt", tmp["rng"] / f"rank{r}.pt")
    ema_src, ema_dst = root / "ema" / f"{tag}.safetensors", root / "ema" / f"{report.tag}.safetensors"
    from safetensors import safe_open

    with safe_open(str(ema_src), "pt") as f:
        report.ema_params = len(list(f.keys()))
    shutil.copyfile(ema_src, ema_dst.with_name(ema_dst.name + ".tmp"))
    os.replace(ema_dst.with_name(ema_dst.name + ".tmp"), ema_dst)
    for sub, p in tmp.items():
        final = root / sub / report.tag
        shutil.rmtree(final, ignore_errors=True)
        p.rename(final)
    ckpt._fsync_tree(*(root / sub / report.tag for sub in ("g", "d", "rng")), ema_dst)
    latest = root / "LATEST.tmp"
    latest.write_text(report.tag)
    ckpt._fsync_tree(latest)
    latest.replace(root / "LATEST")
    ckpt._fsync_tree(root / "LATEST")
    return report


def resume_overrides(r: ReshardReport, nnodes: int = 1) -> list[str]:
    """The config overrides that resume ``r``'s run on its new world size over ``nnodes`` nodes."""
    if r.new_world % nnodes:
        raise ReshardError(f"world size {r.new_world} does not split over {nnodes} nodes")
    return [*r.overrides, f"train.nodes={nnodes}", f"train.gpus_per_node={r.new_world // nnodes}"]


def describe(r: ReshardReport) -> str:
    """What :func:`reshard` converted, in words (printed by ``pvq train --resume-from``)."""
    if r.old_world == r.new_world:
        return (f"resume {r.src_tag} (step {r.step}): written by {r.old_world} rank(s), resumed on as many; "
                f"nothing to convert")
    lines = [f"resume {r.src_tag} (step {r.step}) on {r.new_world} rank(s); it was written by {r.old_world}:"]
    if not r.engines:
        return lines[0] + (f" it would be re-partitioned as {r.tag} (dry run: nothing written); batch: micro "
                           f"{r.micro_batch} x grad_accum {r.old_accum} -> {r.new_accum}")
    for e in r.engines:
        name = {"g": "generator", "d": "discriminator"}.get(e.engine, e.engine)
        what = (f"master weights, Adam exp_avg and exp_avg_sq (Adam step {e.adam_step})" if e.moments
                else "master weights (no Adam state yet: this optimizer has not stepped)")
        lines.append(f"  {name}: {e.params} parameters, {e.elements:,} fp32 elements each of {what} re-partitioned "
                     f"from {r.old_world} x {e.old_partition:,} to {r.new_world} x {e.new_partition:,} elements per "
                     f"rank (values moved, bit for bit); LR scheduler and step counters copied")
    lines.append(f"  EMA: {r.ema_params} full fp32 tensors, copied (each rank takes its slice when loading)")
    lines.append(f"  RNG: ranks 0..{r.new_world - 1} take the states of ranks "
                 f"{', '.join(str(i % r.old_world) for i in range(r.new_world))}")
    lines.append(f"  batch: global {r.global_batch} = micro {r.micro_batch} x grad_accum {r.old_accum} x {r.old_world} "
                 f"rank(s) -> micro {r.micro_batch} x grad_accum {r.new_accum} x {r.new_world}; the data continues "
                 f"at step {r.step} (sample {r.step * r.global_batch:,}), none replayed or skipped")
    lines.append(f"  written as {r.tag} (the original {r.src_tag} is kept); LATEST -> {r.tag}")
    return "\n".join(lines)


def saved_gpus_per_node(run: Path) -> int | None:
    """``train.gpus_per_node`` of the config that trained ``run``, as its run directory records it
    (the checkpoint files hold the world size only): the ``config.json`` the trainer logs to the
    run's local MLflow store (``mlartifacts/.../RUN_ID/artifacts``, rewritten by every attempt, so
    the config that wrote the latest checkpoint), else the EMA export's ``config.yaml``; ``None``
    when neither is there (a remote tracking server and no export)."""
    import json

    import yaml

    run = Path(run)
    found = []
    try:
        run_id = json.loads((run / "mlflow_run.json").read_text())["run_id"]
        found = [p for p in (run / "mlartifacts").rglob("config.json")
                 if p.parent.name == "artifacts" and p.parent.parent.name == run_id]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for path in [*found, run / "export" / "config.yaml"]:
        try:
            text = path.read_text()
            cfg = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            return int(cfg["train"]["gpus_per_node"])
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
            continue
    return None


def default_nnodes(new_world: int, gpus_per_node: int | None) -> int:
    """Nodes to resume ``new_world`` ranks on: as many of the run's ``gpus_per_node`` as fill it,
    when they do exactly (8 ranks of an 8-GPU-node run: 1 node; 32: 4), else one node."""
    if gpus_per_node and gpus_per_node >= 1 and new_world % gpus_per_node == 0 and new_world // gpus_per_node >= 1:
        return new_world // gpus_per_node
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pvq_model.train.reshard",
                                description="Convert a run's latest checkpoint to another world size.")
    p.add_argument("run", type=Path, help="run directory (holds checkpoints/)")
    p.add_argument("world_size", type=int)
    p.add_argument("--tag", help="checkpoint tag (default: LATEST)")
    p.add_argument("--nnodes", type=int, default=0,
                   help="nodes the run resumes on, for the printed overrides (default: world_size / the run's "
                        "train.gpus_per_node when that is a whole number >= 1, else 1)")
    a = p.parse_args(argv)
    try:
        if a.nnodes < 0:
            raise ReshardError(f"--nnodes {a.nnodes}: must be >= 1")
        nnodes = a.nnodes or default_nnodes(a.world_size, saved_gpus_per_node(a.run))
        if a.world_size >= 1 and a.world_size % nnodes:  # before converting anything
            raise ReshardError(f"world size {a.world_size} does not split over {nnodes} nodes; choose --nnodes")
        r = reshard(a.run / "checkpoints", a.world_size, a.tag)
        overrides = resume_overrides(r, nnodes)
    except (ReshardError, FileNotFoundError, ckpt.UntrustedCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(describe(r))
    print("resume with: --set " + " --set ".join(overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
