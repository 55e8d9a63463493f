"""What the throughput benchmarks share: print the numbers as JSON and the ratio against its target,
and optionally write the JSON to a file."""

from __future__ import annotations

import json
from pathlib import Path


def emit(res: dict, summary: str, json_path: Path | None = None) -> None:
    """Print ``res`` (indented JSON), then the one-line ``summary``; also write ``res`` to ``json_path``."""
    text = json.dumps(res, indent=1)
    print(text)
    print(summary)
    if json_path:
        Path(json_path).write_text(text)
