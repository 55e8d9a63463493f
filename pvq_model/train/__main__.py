"""``python -m pvq_model.train --config CONFIG --out RUN [--set key=value ...] [--max-steps N] [--no-resume]``"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pvq_model.train", description=__doc__)
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, export, logs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in this call")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --out")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    from .loop import train

    result = train(cfg, args.out, max_steps=args.max_steps, resume=not args.no_resume)
    import torch.distributed as dist

    if dist.get_rank() == 0:
        (args.out / "result.json").write_text(json.dumps(
            {"step": result.step, "losses": result.losses, "export": str(result.export_dir or ""),
             "mlflow_run_id": result.run_id, "stopped": result.stopped}))
    dist.destroy_process_group()
    return 143 if result.stopped else 0  # 128 + SIGTERM: checkpointed, not finished


def _exit(code: int) -> None:
    """End the process without the interpreter's teardown, once everything is flushed.

    The work is done and written by now (checkpoints, export, ``result.json``, the MLflow run
    closed). What is left is the C++ teardown of torch.distributed's and DeepSpeed's objects at
    interpreter exit, which can abort after a clean ``destroy_process_group`` ("terminate called
    without an active exception", SIGABRT on one rank; pytorch/pytorch#179291 describes the gloo
    side): CI saw it once in a finished 2-rank run, and torchrun then fails the whole job."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
