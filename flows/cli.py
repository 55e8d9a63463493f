"""The ``pvq`` command line (the top layer: it may import every package below it).

Every command imports what it runs inside its body, so ``pvq --help`` loads typer, rich and yaml
only; the ``data`` sub-commands are :mod:`data_prep.cli`'s (torch-free). Telemetry switches of the
libraries the commands use (MLflow, Ray) are set here, at the application's entry, never by the
library functions: :func:`main` adds the missing :data:`pvq_common.env.LOCAL_ENV` settings to this
process's environment before any command runs."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.table import Table


class _Command(typer.core.TyperGroup):
    """The ``pvq`` group: an argument with credentials in a URI (``http://user:pw@host``, ``?token=``)
    is refused before any command runs, since arguments end up in job files, sbatch scripts and
    MLflow params (see :func:`flows.common.refuse_credentials`); credentials go in the environment."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if any("://" in a for a in args):  # (imports fsspec only then: `pvq --help` stays light)
            from flows.common import refuse_credentials

            for a in args:
                try:
                    refuse_credentials(a, "the argument")
                except ValueError as e:
                    print(f"error: {e}", file=sys.stderr)
                    ctx.exit(2)
        return super().parse_args(ctx, args)


app = typer.Typer(help="PVQ-VAE: pyramidal vector-quantized video autoencoder.", no_args_is_help=True,
                  add_completion=False, cls=_Command)


@app.callback()
def main() -> None:
    """PVQ-VAE: pyramidal vector-quantized video autoencoder."""
    from pvq_common.env import missing_local_env

    os.environ.update(missing_local_env())  # the application's own process: no telemetry, loopback only

console = Console()

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "debug.yaml"


def _load_model(config: Path | None, checkpoint: Path | None, overrides: list[str]):
    import torch

    from pvq_model.config import load_config
    from pvq_model.vae import PVQVAE

    if checkpoint is not None:
        model = PVQVAE.from_pretrained(checkpoint)
        if overrides:  # e.g. inference.* tile sizes: the export's config with the overrides, its weights
            tuned = PVQVAE(load_config(Path(checkpoint) / "config.yaml", overrides))
            tuned.load_state_dict(model.state_dict())
            model = tuned.eval()
        return model
    cfg = load_config(config or DEFAULT_CONFIG, overrides)
    torch.manual_seed(cfg.train.seed)
    console.print(f"[yellow]no --checkpoint: using randomly initialised weights of {config or DEFAULT_CONFIG}[/]")
    return PVQVAE(cfg).eval()


def _metrics_table(title: str, rows: list[tuple]) -> Table:
    table = Table(title=title)
    for col in ("clip", "frames", "size", "PSNR (dB)", "SSIM", "LPIPS", "seconds"):
        table.add_column(col, justify="right" if col != "clip" else "left")
    for r in rows:
        table.add_row(*[str(v) for v in r])
    return table


@functools.lru_cache(maxsize=4)
def _lpips(backbone: str | None, linear: str | None):
    """LPIPS for the configured weight files, loaded once per process (None when not configured)."""
    from pvq_model.config import LPIPSConfig
    from pvq_model.perceptual import build_lpips

    return build_lpips(LPIPSConfig(backbone_weights=backbone, linear_weights=linear))


def reconstruct_file(model, src: Path, dst: Path, max_frames: int | None, tiled: bool):
    """Reconstruct one video/image file to ``dst`` (mp4); returns (row for the table, metrics).

    Tiled (the default), the clip streams (pvq_model.eval.stream): decoded from ffmpeg in chunks, encoded
    and decoded in tiles and chunks, written and measured as chunks finish, in memory that does not
    grow with its length. Untiled, the whole clip is one tensor (small clips only)."""
    import torch

    from pvq_model.eval.stream import VideoFileSource, reconstruct_stream
    from pvq_model.eval.video_io import read_video, to_tensor, to_uint8, write_video
    from pvq_model.metrics import ClipMetrics, clip_metrics

    lpips = _lpips(model.cfg.lpips.backbone_weights, model.cfg.lpips.linear_weights)
    start = time.perf_counter()
    if tiled:
        res = reconstruct_stream(model, VideoFileSource(src, max_frames), out=dst, lpips=lpips)
        r = res.metrics
        m = ClipMetrics([r["psnr"]], [r["ssim"]], None if r["lpips"] is None else [r["lpips"]], [r["psnr_frames"]])
        (frames, h, w), seconds = res.size, time.perf_counter() - start
    else:
        frames_u8, fps = read_video(src, max_frames)
        x = to_tensor(frames_u8)
        with torch.no_grad():
            recon, _ = model.reconstruct(x, tiled=False)
        seconds = time.perf_counter() - start
        write_video(dst, to_uint8(recon), fps=fps)
        m = clip_metrics(x, recon, lpips=lpips)
        frames, h, w = x.shape[2:]
    lp = f"{m.lpips[0]:.4f}" if m.lpips is not None else "absent"
    row = (src.name, frames, f"{w}x{h}", f"{m.psnr[0]:.2f}", f"{m.ssim[0]:.4f}", lp, f"{seconds:.1f}")
    return row, m


@app.command()
def reconstruct(
    inp: Path = typer.Argument(..., help="input video or image"),
    out: Path = typer.Argument(..., help="output mp4"),
    config: Path = typer.Option(None, help="config YAML (default configs/debug.yaml) when no checkpoint"),
    checkpoint: Path = typer.Option(None, help="directory from save_pretrained / training export"),
    max_frames: int = typer.Option(96, help="decode at most this many frames (0 = all)"),
    untiled: bool = typer.Option(False, help="run the whole clip at once instead of tiles/chunks"),
    set_: list[str] = typer.Option([], "--set", help="config override key.path=value"),
):
    """Encode and decode a clip, write the reconstruction, print PSNR / SSIM / LPIPS."""
    from pvq_model.config import ConfigError
    from pvq_model.eval.video_io import MediaError

    try:
        model = _load_model(config, checkpoint, set_)
        row, _ = reconstruct_file(model, inp, out, max_frames or None, tiled=not untiled)
    except (ConfigError, MediaError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(_metrics_table(f"reconstruction -> {out}", [row]))


PRESETS_DIR = DEFAULT_CONFIG.parent / "presets"


def _fmt_bpp(bpp: float | None) -> str:
    return "continuous" if bpp is None else f"{bpp:#.4g}"


def _presets_table(overrides: list[str]) -> Table:
    """One row per compression: configs/paper.yaml and every configs/presets/*.yaml, each with
    ``overrides`` applied."""
    from pvq_model.config import load_config
    from pvq_model.rates import REFERENCE_CLIP, bits_per_pixel, bits_per_token, compression_ratio

    t, h, w = REFERENCE_CLIP
    table = Table(title=f"configs/paper.yaml and configs/presets/*.yaml (bits per pixel at {w}x{h}, T={t})")
    for col in ("config", "t x h x w x d", "ratio", "quantizer", "bits/token", "bits/pixel"):
        table.add_column(col, justify="left" if col in ("config", "quantizer") else "right", no_wrap=True)
    for path in [DEFAULT_CONFIG.parent / "paper.yaml", *sorted(PRESETS_DIR.glob("*.yaml"))]:
        cfg = load_config(path, overrides)
        ft, fh, fw = cfg.model.compression
        bits = bits_per_token(cfg)
        table.add_row(path.stem, f"{ft}x{fh}x{fw}x{cfg.model.latent_dim}",
                      f"{compression_ratio(cfg):g}", cfg.quantizer.type,
                      "continuous" if bits is None else f"{bits:.4g}", _fmt_bpp(bits_per_pixel(cfg, t, h, w)))
    return table


@app.command()
def info(
    config: Path = typer.Option(DEFAULT_CONFIG, help="config YAML"),
    set_: list[str] = typer.Option([], "--set", help="config override key.path=value"),
    all_presets: bool = typer.Option(False, "--all-presets",
                                     help="instead: one line per configs/paper.yaml and configs/presets/*.yaml "
                                          "(--set applies to each)"),
):
    """Parameter counts, compression ratio, and the latent shape and bits per pixel for every paper
    resolution and frame count."""
    import torch

    from pvq_model.config import PAPER_FRAMES, PAPER_SCALES, ConfigError, load_config
    from pvq_model.rates import bits_per_pixel, describe, latent_shape
    from pvq_model.vae import PVQVAE

    try:
        if all_presets:
            console.print(_presets_table(set_))
            return
        cfg = load_config(config, set_)
    except ConfigError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    with torch.device("meta"):
        model = PVQVAE(cfg)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    console.print(f"{cfg.name}: encoder {n(model.encoder):,}  quantizer {n(model.quantizer):,} "
                  f"({cfg.quantizer.type}, {cfg.quantizer.codebook_size:,} codes x dim {cfg.quantizer.dim})  "
                  f"decoder {n(model.decoder):,} parameters")
    console.print(f"compression (t x h x w x d) {describe(cfg)}")
    table = Table(title="latent (t x h x w x d) per input (W x H, T)")
    bpp = Table(title="bits per pixel per input (W x H, T)",
                caption="all levels' tokens x log2(codebook size) / (T x H x W); no entropy coding")
    for tab in (table, bpp):
        tab.add_column("W x H")
        for t in PAPER_FRAMES:
            tab.add_column(f"T={t}", justify="right")
    for w, h in PAPER_SCALES:
        table.add_row(f"{w}x{h}", *["x".join(map(str, latent_shape(cfg, t, h, w))) for t in PAPER_FRAMES])
        bpp.add_row(f"{w}x{h}", *[_fmt_bpp(bits_per_pixel(cfg, t, h, w)) for t in PAPER_FRAMES])
    console.print(table)
    if cfg.quantizer.type == "identity":
        console.print("bits per pixel: continuous (the identity quantizer emits no tokens)")
    else:
        console.print(bpp)


@app.command("config")
def show_config(
    config: Path = typer.Argument(..., help="config YAML"),
    set_: list[str] = typer.Option([], "--set", help="config override key.path=value"),
):
    """Print the resolved, validated config."""
    from pvq_model.config import ConfigError, load_config

    try:
        cfg = load_config(config, set_)
    except ConfigError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    from data_prep.storage import redact_tree

    console.print(yaml.safe_dump(redact_tree(cfg.to_dict()), sort_keys=False))  # a URI's password stays out


@app.command()
def train(
    config: Path = typer.Option(DEFAULT_CONFIG, help="config YAML"),
    out: Path = typer.Option(None, help="run directory: checkpoints, export, mlflow.db (default runs/<config name>)"),
    set_: list[str] = typer.Option([], "--set", help="config override key.path=value"),
    launcher: str = typer.Option("none", help="none (this process) | local (torchrun) | slurm | deepspeed"),
    nproc: int = typer.Option(0, help="processes per node (0: from the config)"),
    nnodes: int = typer.Option(0, help="nodes (0: from the config; with --resume-from --world-size N: 1 for "
                               "--launcher none/local, else N / the run's train.gpus_per_node)"),
    dry_run: bool = typer.Option(False, help="print the launch command and per-GPU memory estimate only"),
    max_steps: int = typer.Option(0, help="stop after this many steps in this call (0: until train.steps)"),
    no_resume: bool = typer.Option(False, help="ignore checkpoints already in --out"),
    resume_from: Path = typer.Option(None, "--resume-from", help="run directory to continue (it becomes --out)"),
    world_size: int = typer.Option(0, "--world-size", help="with --resume-from: ranks to continue on; a checkpoint "
                                   "of another world size is converted first (pvq_model.train.reshard)"),
):
    """Train with DeepSpeed ZeRO-3 (generator + discriminator, EMA, checkpoints, MLflow)."""
    from pvq_model.config import ConfigError, load_config

    if world_size and resume_from is None:
        console.print("[red]error:[/] --world-size applies with --resume-from RUN only")
        raise typer.Exit(2)
    try:
        cfg = load_config(config, set_)
        if resume_from is not None:  # convert the checkpoint to --world-size, say what changed, resume
            from pvq_model.train.reshard import (ReshardError, default_nnodes, describe, reshard, resume_overrides,
                                                 saved_gpus_per_node)

            try:
                r = reshard(resume_from / "checkpoints", world_size or cfg.train.world_size, write=not dry_run)
                # this machine (none / local): one node; a cluster launcher: the run's GPUs per node
                nnodes = nnodes or (1 if launcher in ("none", "local") else default_nnodes(
                    r.new_world, saved_gpus_per_node(resume_from) or cfg.train.gpus_per_node))
                set_ = [*set_, *resume_overrides(r, nnodes)]
            except (ReshardError, OSError) as e:
                console.print(f"[red]error:[/] {e}")
                raise typer.Exit(2) from None
            console.print(describe(r))
            cfg, out, nproc = load_config(config, set_), resume_from, nproc or r.new_world // nnodes
            launcher = "local" if launcher == "none" and r.new_world > 1 else launcher
    except ConfigError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    out = out or Path("runs") / cfg.name
    if launcher != "none" or dry_run:
        from pvq_model.launch.cli import run
        from pvq_model.launch.plan import LaunchRequest

        if max_steps or no_resume:
            console.print("[red]error:[/] --max-steps / --no-resume apply to --launcher none only")
            raise typer.Exit(2)
        if launcher == "none":  # a dry run of the config's own geometry
            launcher = "slurm" if cfg.train.nodes > 1 else "local"
        raise typer.Exit(run(LaunchRequest(config, list(set_), out, launcher, nproc or None, nnodes or None),
                             dry_run))
    from pvq_model.train.loop import train as train_loop

    result = train_loop(cfg, out, max_steps=max_steps or None, resume=not no_resume)
    console.print(f"trained to step {result.step}; EMA export: {result.export_dir}; MLflow run {result.run_id}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demo(ctx: typer.Context):
    """The whole DAG on the embedded demo set (flows.demo): shard -> train -> evaluate -> register.
    Options: --steps N, --launcher single|local, --nproc N (see python -m flows.demo --help)."""
    from flows.demo import main as demo_main

    raise typer.Exit(demo_main(list(ctx.args)))


@app.command("eval")
def eval_(
    model: str = typer.Option(..., "--model", help="model directory or models:/name@alias"),
    data: str = typer.Option(..., "--data", help="shard dataset (pvq data shard output) or folder of videos/images"),
    out: Path = typer.Option(None, "--out", help="write clips.parquet + summary.json here"),
    split: str = typer.Option("val", help="shard split"),
    version: str = typer.Option(None, help="dataset version (default LATEST)"),
    untiled: bool = typer.Option(False, help="whole clips instead of tiles/chunks"),
    max_frames: int = typer.Option(0, help="folder videos: at most this many frames (0 = all)"),
    limit: int = typer.Option(0, help="evaluate at most this many clips (0 = all)"),
):
    """PSNR / SSIM / LPIPS on images and videos, per bucket and frame count; codebook usage."""
    from pvq_model.eval.evaluate import eval_command

    raise typer.Exit(eval_command(model, data, out, split, version, untiled, max_frames, limit))


@app.command("report")
def report_(
    eval_dir: list[Path] = typer.Option(..., "--eval", help="pvq eval --out directory (repeat to compare)"),
    out: Path = typer.Option(Path("report"), "--out", help="output directory"),
    run: Path = typer.Option(None, "--run", help="training run directory (its mlflow.db gives the curves)"),
    clips: int = typer.Option(4, help="clips shown"),
    frames: int = typer.Option(4, help="frames shown per clip"),
):
    """A self-contained HTML page: frames, reconstructions, error maps, curves, codebook usage, table."""
    from pvq_model.eval.report import build_report

    try:
        page = build_report(eval_dir, out, run, clips=clips, frames=frames)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(f"report: {page}")


ABLATE_BASE = DEFAULT_CONFIG  # pvq_model.eval.ablate.DEBUG_CONFIG, named here without importing it


@app.command("ablate")
def ablate_(
    configs: list[str] = typer.Option(..., "--configs", help="ablation YAMLs or a quoted glob (repeatable)"),
    more: list[str] = typer.Argument(None, help="more ablation YAMLs (what an unquoted shell glob expands to)"),
    data: str = typer.Option(..., "--data", help="shard dataset (pvq data shard output)"),
    steps: int = typer.Option(40, "--steps", help="training steps per run"),
    out: Path = typer.Option(Path("ablation"), "--out", help="output directory"),
    split: str = typer.Option("val", help="evaluation split"),
    bucket: list[str] = typer.Option(None, "--bucket", help="training bucket WxH (repeat; default: <=128x128)"),
    seeds: int = typer.Option(1, "--seeds", help="seeds per variant: --seed, --seed + 1, ..."),
    seed: int = typer.Option(42, "--seed", help="the first seed"),
    base: Path = typer.Option(ABLATE_BASE, "--base", help="config the ablation keys apply on "
                              "(configs/cpu.yaml: the CPU recipe at 128x128 x 16)"),
    overrides: list[str] = typer.Option(None, "--set", help="key.path=value on every run (repeatable)"),
    no_report: bool = typer.Option(False, help="skip the HTML report"),
    jobs: int = typer.Option(1, "--jobs", help="trainings at once, each on cpu count / jobs threads"),
):
    """Train every ablation variant with the same data, seeds and budget; write the Table-1 comparison
    (mean ± std over seeds) and whether each of the paper's orderings holds at this scale."""
    from pvq_model.config import ConfigError
    from pvq_model.eval.ablate import AblationError, ablate, expand_configs

    files = expand_configs([*configs, *(more or [])])
    try:
        table = ablate(files, data, steps, out, split=split, buckets=bucket or None, seed=seed, seeds=seeds,
                       base=base, extra_overrides=overrides or None, report=not no_report, jobs=jobs)
    except (AblationError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(table)
    print(f"written: {out / 'ablation.md'}, {out / 'ablation.json'}")


@app.command("baseline")
def baseline_(
    model: Path = typer.Option(..., "--model", help="local diffusers autoencoder directory"),
    data: str = typer.Option(..., "--data", help="shard dataset or folder of videos/images"),
    out: Path = typer.Option(None, "--out", help="write clips.parquet + summary.json here"),
    split: str = typer.Option("val", help="shard split"),
    max_frames: int = typer.Option(0, help="folder videos: at most this many frames (0 = all)"),
    limit: int = typer.Option(0, help="at most this many clips (0 = all)"),
    name: str = typer.Option(None, help="row name in tables (default: the diffusers class)"),
):
    """Evaluate a diffusers video autoencoder (e.g. AutoencoderKLCogVideoX) on the same data as pvq eval."""
    from pvq_model.eval.baselines import evaluate_baseline
    from pvq_model.eval.summary import EvaluationError, format_summary

    try:
        res = evaluate_baseline(model, data, out, split=split, max_frames=max_frames or None,
                                limit=limit or None, name=name)
    except (EvaluationError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(format_summary(res.summary))


@app.command("reproduce")
def reproduce_(
    model_uri: str = typer.Argument(..., help="models:/NAME@ALIAS or models:/NAME/VERSION"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the checkout and launch command only"),
    launcher: str = typer.Option(None, help="single | local | slurm | deepspeed (default: from the config)"),
    out: str = typer.Option(None, help="where the config and the new run go (default runs/reproduce-...)"),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default MLFLOW_TRACKING_URI)"),
):
    """Print (or run) the command that retrains a registered model."""
    from flows.reproduce import reproduce_command

    raise typer.Exit(reproduce_command(model_uri, dry_run, launcher, out, tracking_uri))


def _mount_data() -> None:
    """``pvq data ...``: data_prep's own typer app (its imports are lazy: it loads no Ray or torch)."""
    from data_prep.cli import app as data_app

    app.add_typer(data_app, name="data", help="Shard, refresh and inspect datasets (Ray Data, webdataset).")


_mount_data()

if __name__ == "__main__":
    app()
