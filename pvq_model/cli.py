"""The ``pvq`` command line."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="PVQ-VAE: pyramidal vector-quantized video autoencoder.", no_args_is_help=True,
                  add_completion=False)
console = Console()

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "debug.yaml"


def _load_model(config: Path | None, checkpoint: Path | None, overrides: list[str]):
    import torch

    from .config import load_config
    from .vae import PVQVAE

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
    from .config import LPIPSConfig
    from .perceptual import build_lpips

    return build_lpips(LPIPSConfig(backbone_weights=backbone, linear_weights=linear))


def reconstruct_file(model, src: Path, dst: Path, max_frames: int | None, tiled: bool):
    """Reconstruct one video/image file to ``dst`` (mp4); returns (row for the table, metrics).

    Tiled (the default), the clip streams (pvq_model.stream): decoded from ffmpeg in chunks, encoded
    and decoded in tiles and chunks, written and measured as chunks finish, in memory that does not
    grow with its length. Untiled, the whole clip is one tensor (small clips only)."""
    import torch

    from .metrics import ClipMetrics, clip_metrics
    from .stream import VideoFileSource, reconstruct_stream
    from .video_io import read_video, to_tensor, to_uint8, write_video

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
    from .config import ConfigError
    from .video_io import MediaError

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
    from .config import load_config
    from .rates import REFERENCE_CLIP, bits_per_pixel, bits_per_token, compression_ratio

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

    from .config import PAPER_FRAMES, PAPER_SCALES, ConfigError, load_config
    from .rates import bits_per_pixel, describe, latent_shape
    from .vae import PVQVAE

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
    from .config import ConfigError, load_config

    try:
        cfg = load_config(config, set_)
    except ConfigError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


@app.command()
def train(
    config: Path = typer.Option(DEFAULT_CONFIG, help="config YAML"),
    out: Path = typer.Option(None, help="run directory: checkpoints, export, mlflow.db (default runs/<config name>)"),
    set_: list[str] = typer.Option([], "--set", help="config override key.path=value"),
    launcher: str = typer.Option("none", help="none (this process) | local (torchrun) | slurm | deepspeed"),
    nproc: int = typer.Option(0, help="processes per node (0: from the config)"),
    nnodes: int = typer.Option(0, help="nodes (0: from the config)"),
    dry_run: bool = typer.Option(False, help="print the launch command and per-GPU memory estimate only"),
    max_steps: int = typer.Option(0, help="stop after this many steps in this call (0: until train.steps)"),
    no_resume: bool = typer.Option(False, help="ignore checkpoints already in --out"),
):
    """Train with DeepSpeed ZeRO-3 (generator + discriminator, EMA, checkpoints, MLflow)."""
    from .config import ConfigError, load_config

    try:
        cfg = load_config(config, set_)
    except ConfigError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    out = out or Path("runs") / cfg.name
    if launcher != "none" or dry_run:
        from .train.launch import run

        if max_steps or no_resume:
            console.print("[red]error:[/] --max-steps / --no-resume apply to --launcher none only")
            raise typer.Exit(2)
        if launcher == "none":  # a dry run of the config's own geometry
            launcher = "slurm" if cfg.train.nodes > 1 else "local"
        raise typer.Exit(run(config, list(set_), out, launcher,
                             nproc or None, nnodes or None, dry_run))
    from .train.loop import train as train_loop

    result = train_loop(cfg, out, max_steps=max_steps or None, resume=not no_resume)
    console.print(f"trained to step {result.step}; EMA export: {result.export_dir}; MLflow run {result.run_id}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demo(ctx: typer.Context):
    """The whole DAG on the embedded demo set (flows.demo): shard -> train -> evaluate -> register.
    Options: --steps N, --launcher single|local, --nproc N (see python -m flows.demo --help)."""
    from flows.demo import main

    raise typer.Exit(main(list(ctx.args)))


def _mount_subcommands() -> None:
    """Commands implemented beside their code (their imports stay lazy: none loads Prefect or Ray)."""
    from data_prep.cli import app as data_app
    from flows.reproduce import typer_command as reproduce_command

    from . import ablate, baselines, report
    from .evaluate import typer_command as eval_command

    app.add_typer(data_app, name="data", help="Shard, refresh and inspect datasets (Ray Data, webdataset).")
    app.command("eval")(eval_command())
    app.command("report")(report.typer_command())
    app.command("ablate")(ablate.typer_command())
    app.command("baseline")(baselines.typer_command())
    app.command("reproduce")(reproduce_command())


_mount_subcommands()

if __name__ == "__main__":
    app()
