"""Tiled / chunked application of a shape-scaling function with halos and overlap blending.

A function ``fn`` maps an input window of size (t, h, w) to an output of size (t, h, w) * scale
(the encoder scales by (1/16, 1/32, 1/32), the decoder by (16, 32, 32)). The input is cut into
tiles; each tile is processed with a *halo* of extra context on every interior side, the halo's
output is cropped away, and neighbouring tiles are blended with linear ramps across their
*overlap*. Peak memory is bounded by one window, not by the clip.

:func:`tiled_stream` is the engine: time is the outer loop, the input is read window by window
through a callback, and output frames are handed to ``emit`` in order as soon as no later tile
touches them, so neither the input nor the output has to exist as a whole. Its accumulator holds
one temporal tile of output (the frames of one chunk, full width and height); the blend weights
are kept per axis (1D), since the weight of a grid of tiles is the product of the per-axis sums.
:func:`tiled_apply` runs the same engine on an in-memory tensor, so both give identical numbers.

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


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis: the input window it reads and the output span it writes."""

    lo: int
    """First input index of the window (tile start minus halo, clipped)."""
    hi: int
    """End of the window (tile end plus halo, clipped)."""
    crop: slice
    """Part of ``fn``'s output that is kept (the halo's output cropped away), output units."""
    out: int
    """Output index of the kept part's first element."""
    weight: Tensor
    """(len,) blend weight of the kept part along this axis."""


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


def axis_plan(n: int, tile: int, overlap: int, halo: int, scale: float,
              device: torch.device | str = "cpu") -> tuple[list[AxisTile], Tensor]:
    """Tiles along one axis of input length ``n`` and the summed blend weight (n * scale,) of the
    output. An axis whose tile plus halo already spans it is processed once: every window along it
    would see the whole axis and compute the same values."""
    tn = n if tile + halo >= n else min(tile, n)
    total = round(n * scale)
    tiles, weight = [], torch.zeros(total, device=device)
    for s in _starts(n, tn, min(overlap, max(n - 1, 0))):
        lo, hi = max(0, s - halo), min(n, s + tn + halo)
        crop = slice(round((s - lo) * scale), round((s - lo + tn) * scale))
        out, length = round(s * scale), round(tn * scale)
        w = _ramp(length, out, total, round(overlap * scale), device)
        weight[out:out + length] += w
        tiles.append(AxisTile(lo, hi, crop, out, w))
    return tiles, weight


def largest_window(size: tuple[int, int, int], spec: TileSpec) -> tuple[int, int, int]:
    """(t, h, w) of the largest input window :func:`tiled_stream` reads from an input of ``size``
    (tile plus halos, along each axis)."""
    return tuple(max(a.hi - a.lo for a in axis_plan(n, t, o, h, 1.0)[0])
                 for n, t, o, h in zip(size, spec.tile, spec.overlap, spec.halo))


def window_frames(size: tuple[int, int, int], spec: TileSpec) -> int:
    """The most input frames one window of :func:`tiled_stream` reads (chunk plus halos)."""
    return largest_window(size, spec)[0]


def tiled_stream(fn: Callable[[Tensor], Tensor], read: Callable[..., Tensor], size: tuple[int, int, int],
                 spec: TileSpec, scale: tuple[float, float, float], emit: Callable[[int, Tensor], None],
                 progress: Callable[[int, int], None] | None = None, device: torch.device | str = "cpu") -> None:
    """Apply ``fn`` tile by tile to an input of ``size`` (T, H, W), read window by window.

    ``read(t0, t1, h0, h1, w0, w1)`` returns the input window (B, C, t1-t0, h1-h0, w1-w0); it is
    called with non-decreasing ``t0`` and ``t1``, so a reader may drop frames before the last
    ``t0``. ``emit(t, y)`` receives the final, blended output frames in order, one at a time: ``y``
    (B, C', 1, H*sh, W*sw) is frame ``t``. Memory: one window, one temporal tile of output (T*st tile frames at
    full H*sh x W*sw, fp32) and 1D weights."""
    plans = [axis_plan(n, t, o, hl, sc, device)
             for n, t, o, hl, sc in zip(size, spec.tile, spec.overlap, spec.halo, scale)]
    (tt, wt), (th, wh), (tw, ww) = plans
    norm_hw = (wh[:, None] * ww[None, :]).clamp_min(1e-12)  # (H', W')
    total, done = len(tt) * len(th) * len(tw), 0
    acc: Tensor | None = None  # (L, B, C', H', W'): output frames [at.out, at.out + L) of the current chunk
    for i, at in enumerate(tt):
        length = at.crop.stop - at.crop.start  # the same L for every temporal tile
        for bh in th:
            for bw in tw:
                y = fn(read(at.lo, at.hi, bh.lo, bh.hi, bw.lo, bw.hi))
                y = y[:, :, at.crop, bh.crop, bw.crop].float().permute(2, 0, 1, 3, 4)  # (L, B, C', h, w)
                if acc is None:
                    acc = y.new_zeros(length, y.shape[1], y.shape[2], wh.shape[0], ww.shape[0])
                w = at.weight[:, None, None] * bh.weight[None, :, None] * bw.weight[None, None, :]
                acc[:, :, :, bh.out:bh.out + y.shape[3], bw.out:bw.out + y.shape[4]] += y * w[:, None, None]
                done += 1
                if progress is not None:
                    progress(done, total)
        # the frames before the next temporal tile's first output are final
        final = (tt[i + 1].out if i + 1 < len(tt) else wt.shape[0]) - at.out
        for j in range(final):  # one frame at a time: no second full-size copy of the chunk
            norm = wt[at.out + j].clamp_min(1e-12) * norm_hw
            emit(at.out + j, (acc[j] / norm).unsqueeze(2))
        for j in range(length - final):  # shift the overlap to the front, frame by frame (no copy of the rest)
            acc[j].copy_(acc[final + j])
        acc[length - final:].zero_()


def tiled_apply(fn: Callable[[Tensor], Tensor], x: Tensor, spec: TileSpec,
                scale: tuple[float, float, float], progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Apply ``fn`` to ``x`` (B, C, T, H, W) tile by tile; returns (B, C', T*st, H*sh, W*sw).
    The same engine (and numbers) as :func:`tiled_stream`, with the input and output in memory."""
    parts: list[Tensor] = []
    tiled_stream(fn, lambda t0, t1, h0, h1, w0, w1: x[:, :, t0:t1, h0:h1, w0:w1], tuple(x.shape[2:]), spec,
                 scale, lambda t, y: parts.append(y), progress, x.device)
    return torch.cat(parts, 2)
