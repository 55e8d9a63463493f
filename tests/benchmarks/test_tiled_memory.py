"""benchmarks/tiled_memory.py ``--windows`` at a small tile: the windows it runs are the largest ones
the streaming path cuts from 1080p x 96 (the TileSpec arithmetic), each in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_windows_are_the_largest_stream_windows(tmp_path):
    out = tmp_path / "windows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tiled_memory.py"), "--windows", "debug",
                           "--set", "inference.tile_size=128", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    enc, dec = json.loads(out.read_text())
    # encode: 32-frame chunks without temporal halo, 128-px tiles plus a 32-px halo on each side
    assert (enc["window"], enc["input"], enc["output"]) == ("enc", [32, 192, 192], [2, 6, 6])
    # decode: 2 latent frames plus 1 on each side, 4 latent columns plus 2 (64 px) on each side
    assert (dec["window"], dec["input"], dec["output"]) == ("dec", [4, 8, 8], [64, 256, 256])
    # each child holds at least its model, its input and its output (fp32)
    assert dec["peak_rss_gib"] > 64 * 256 * 256 * 3 * 4 / 2**30
    assert all(r["params_m"] > 0.1 and r["seconds"] > 0 for r in (enc, dec))
    assert "peak RSS" in proc.stdout
