"""Tiled / chunked application of a shape-scaling function with halos and overlap blending.

A function ``fn`` maps an input window of size (t, h, w) to an output of size (t, h, w) * scale
(the encoder scales by (1/16, 1/32, 1/32), the decoder by (16, 32, 32)). The input is cut into
tiles; each tile is processed with a *halo* of extra context on every interior side, the halo's
output is cropped away, and neighbouring tiles are blended with linear ramps across their
*overlap*. Peak memory is bounded by one window, not by the clip.

For a purely local ``fn`` (the decoder: convolutions and per-position norms) with a halo at least
its receptive radius, the result equals the untiled one up to float rounding. Global operations
(the encoder's FFT branch, its deep receptive field) make tiled encoding an approximation whose
error shrinks with the halo; see the tests for the measured bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TileSpec:
    """Sizes in *input* units per axis (t, h, w); each must be a multiple of ``align``."""

    tile: tuple[int, int, int]
    overlap: tuple[int, int, int]
    halo: tuple[int, int, int]


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, n - tile, stride))
    return starts + [n - tile]


def _ramp(length: int, start: int, total: int, overlap: int, device: torch.device) -> Tensor:
    """Blend weight along one axis for a tile [start, start+length) of ``total``: linear ramps of
    ``overlap`` samples on interior edges, 1 elsewhere."""
    w = torch.ones(length, device=device)
    if overlap <= 0:
        return w
    ramp = (torch.arange(overlap, device=device, dtype=torch.float32) + 0.5) / overlap
    if start > 0:
        w[:overlap] = torch.minimum(w[:overlap], ramp[: min(overlap, length)])
    if start + length < total:
        w[-overlap:] = torch.minimum(w[-overlap:], ramp.flip(0)[-min(overlap, length):])
    return w


def tiled_apply(fn: Callable[[Tensor], Tensor], x: Tensor, spec: TileSpec,
                scale: tuple[float, float, float], progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Apply ``fn`` to ``x`` (B, C, T, H, W) tile by tile; returns (B, C', T*st, H*sh, W*sw)."""
    size = x.shape[2:]
    # an axis whose tile plus halo already spans it is processed once: every window along it would
    # see the whole axis and compute the same values
    tiles = [n if t + hl >= n else min(t, n) for n, t, hl in zip(size, spec.tile, spec.halo)]
    starts = [_starts(n, tn, min(o, max(n - 1, 0))) for n, tn, o in zip(size, tiles, spec.overlap)]
    out = weight = None
    total = len(starts[0]) * len(starts[1]) * len(starts[2])
    done = 0
    for s0 in starts[0]:
        for s1 in starts[1]:
            for s2 in starts[2]:
                lo = [max(0, s - hl) for s, hl in zip((s0, s1, s2), spec.halo)]
                hi = [min(n, s + t + hl) for s, t, hl, n in zip((s0, s1, s2), tiles, spec.halo, size)]
                y = fn(x[:, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
                # crop the halo's output: offsets in output units
                crop = [slice(round((s - l) * sc), round((s - l + t) * sc))
                        for s, l, t, sc in zip((s0, s1, s2), lo, tiles, scale)]
                y = y[:, :, crop[0], crop[1], crop[2]].float()
                if out is None:
                    shape = [round(n * sc) for n, sc in zip(size, scale)]
                    out = y.new_zeros(y.shape[0], y.shape[1], *shape)
                    weight = y.new_zeros(*shape)
                o = [round(s * sc) for s, sc in zip((s0, s1, s2), scale)]
                ln = y.shape[2:]
                w = [_ramp(ln[i], o[i], out.shape[2 + i], round(spec.overlap[i] * scale[i]), y.device)
                     for i in range(3)]
                wt = w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]
                region = (slice(None), slice(None), slice(o[0], o[0] + ln[0]), slice(o[1], o[1] + ln[1]),
                          slice(o[2], o[2] + ln[2]))
                out[region] += y * wt
                weight[region[2:]] += wt
                done += 1
                if progress is not None:
                    progress(done, total)
    return out / weight.clamp_min(1e-12)
