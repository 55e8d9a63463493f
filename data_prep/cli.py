"""``pvq data ...``: shard sources into webdataset tars, refresh a dataset, show its stats."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pvq_common.config import ConfigError

app = typer.Typer(help="Data pipeline: shard raw videos/images into bucketed webdataset tars, refresh, stats.",
                  no_args_is_help=True)
console = Console(stderr=True)
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "shard" / "default.yaml"


def _load(config: Optional[Path], overrides: list[str]):
    from data_prep.config import load_shard_config

    return load_shard_config(config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None),
                             overrides)


def _summary(title: str, stats: dict) -> Table:
    t = Table(title=title)
    t.add_column("what")
    t.add_column("value", justify="right")
    for k in ("version", "parent", "samples", "shards", "sources", "sources_processed", "added", "changed",
              "removed", "errors", "wall_s", "clips_per_s"):
        if k in stats and stats[k] is not None:
            t.add_row(k, str(stats[k]))
    for group in ("clips_per_bucket", "clips_per_length", "clips_per_split", "errors_by_reason"):
        for k, v in (stats.get(group) or {}).items():
            t.add_row(f"{group.replace('_', ' ')}: {k}", str(v))
    return t


def _run(kind: str, sources: list[str], out: str, config: Optional[Path], overrides: list[str],
         keep_work: bool) -> None:
    from data_prep import shard as job
    from data_prep.sources import SourceError
    from data_prep.storage import StorageError

    try:
        cfg = _load(config, overrides)
    except ConfigError as e:
        console.print(f"[red]config error:[/red] {e}", soft_wrap=True)
        raise typer.Exit(2)
    with ExitStack() as stack:
        progress = stack.enter_context(Progress(TextColumn("{task.description}"), BarColumn(),
                                                MofNCompleteColumn(), TimeElapsedColumn(), console=console))

        def bar(name: str, total: int):
            task = progress.add_task(name, total=total)
            return lambda n: progress.advance(task, n)

        try:
            fn = job.shard if kind == "shard" else job.refresh
            result = fn(sources, out, cfg, progress=bar, keep_work=keep_work)
        except (SourceError, StorageError, job.ShardJobError, FileNotFoundError) as e:
            progress.stop()
            console.print(f"[red]error:[/red] {e}", soft_wrap=True)
            raise typer.Exit(1)
    console.print(result.message)
    if result.wrote:
        console.print(_summary(f"{kind}: {out}", result.stats))


SOURCE_HELP = ("WebVid .csv, COCO captions .json (optionally JSON::IMAGE_DIR), a folder, or s3://bucket/prefix; "
               "repeat for several")


@app.command()
def shard(source: list[str] = typer.Option(..., "--source", "-s", help=SOURCE_HELP),
          out: str = typer.Option(..., "--out", "-o", help="output folder or s3://bucket/prefix"),
          config: Optional[Path] = typer.Option(None, "--config", "-c", help="shard config YAML (configs/shard/)"),
          override: list[str] = typer.Option([], "--set", help="config override key.path=value"),
          keep_work: bool = typer.Option(False, help="keep the local work cache of encoded clips")) -> None:
    """Shard sources into version 1 of a dataset (resumes an unfinished run with the same inputs)."""
    _run("shard", source, out, config, override, keep_work)


@app.command()
def refresh(source: list[str] = typer.Option(..., "--source", "-s", help=SOURCE_HELP),
            out: str = typer.Option(..., "--out", "-o", help="dataset folder or s3:// prefix to refresh"),
            config: Optional[Path] = typer.Option(None, "--config", "-c"),
            override: list[str] = typer.Option([], "--set"),
            keep_work: bool = typer.Option(False)) -> None:
    """Process only new or changed sources, drop removed ones, write a new version (or nothing)."""
    _run("refresh", source, out, config, override, keep_work)


@app.command()
def stats(dataset: str = typer.Argument(..., help="dataset folder or s3:// prefix"),
          version: Optional[str] = typer.Option(None, help="version (default: LATEST)"),
          as_json: bool = typer.Option(False, "--json", help="print _stats.json")) -> None:
    """Show a dataset version's statistics."""
    from data_prep import manifest
    from data_prep.storage import StorageError

    try:
        v = manifest.read_version(dataset, version)
    except (FileNotFoundError, StorageError) as e:
        console.print(f"[red]error:[/red] {e}", soft_wrap=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(v["stats"], indent=1, sort_keys=True))
        return
    Console().print(_summary(f"{dataset} {v['version']}", v["stats"]))
