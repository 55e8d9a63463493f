"""Generator of the small embedded demo set (no download needed).

``make_demo_set(out)`` writes, deterministically:

- ``videos/``: synthetic natural-looking scenes (``natural_frames``: a camera panning and zooming
  over procedurally textured landscapes and terrain, with moving objects), several sizes, aspects,
  lengths;
- ``images/``: a few still images of the same kind;
- ``broken/``: one of each bad input (zero bytes, truncated mp4, text with a video extension,
  audio only, a too-short video, an unreadable image);
- ``webvid.csv`` (WebVid columns ``videoid,contentUrl,duration,page_dir,name``, with one missing path
  and one corrupt row) and ``captions_demo.json`` (COCO captions format) for ``images/``.

Paths inside the CSV are relative to the CSV file, so the set can be moved.
"""

from __future__ import annotations

import csv
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# (name, source, width, height, frames, fps, caption); a source is ``natural=seed=N[:scene=S]``
# (``natural_frames``) or any ffmpeg lavfi source (``testsrc2``, ``mandelbrot``, ...).
# The names are historical (they were lavfi test patterns) and kept: tests and shard jobs use them.
DEMO_VIDEOS: tuple[tuple[str, str, int, int, int, int, str], ...] = (
    ("testsrc_wide", "natural=seed=0", 320, 180, 40, 24, "a colour test pattern with a moving counter"),
    ("mandel_square", "natural=seed=1", 128, 128, 36, 25, "zooming into a mandelbrot fractal"),
    ("bars_portrait", "natural=seed=2", 96, 160, 20, 24, "colour bars in portrait"),
    ("life_4x3", "natural=seed=3", 160, 120, 33, 30, "cellular automaton growing"),
    ("rgb_wide", "natural=seed=4", 256, 144, 17, 24, "rgb test source"),
)
DEMO_IMAGES: tuple[tuple[str, str, int, int, str], ...] = (
    ("img_landscape", "natural=seed=10", 300, 200, "a still test pattern, landscape"),
    ("img_portrait", "natural=seed=13", 120, 200, "a still fractal, portrait"),
    ("img_square", "natural=seed=12", 140, 140, "still colour bars"),
)
SHORT_FRAMES = 10


@dataclass
class DemoSet:
    root: Path
    csv: Path
    coco_json: Path
    image_dir: Path
    video_dir: Path
    videos: dict[str, dict] = field(default_factory=dict)
    """name -> {path, width, height, frames, fps, caption}"""
    images: dict[str, dict] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    """source id (as it appears in the job) -> expected error reason"""


# ---------------------------------------------------------------------------------------------
# Procedural natural-looking content (pure numpy, deterministic for a seed).
#
# A clip is a camera (centre, zoom, roll per frame) moving smoothly over a few world layers,
# each an RGBA raster drawn once and resampled (bilinear) for every frame, so consecutive frames
# are shifted views of the same texture; far layers move less than near ones (parallax) and
# clouds drift on their own. Textures are 1/f^alpha noise (flat below a per-layer feature
# scale) mapped through natural colour ramps; a few soft-edged textured ellipses move along
# smooth paths in world coordinates on top (with soft shadows, occluding each other).
# Two scene kinds: ``landscape`` (sky gradient, clouds, hazy mountains, tree line, fields,
# sometimes a lake) and ``aerial`` (top-down hill-shaded terrain: water, sand, grass, forest,
# rock, with drifting cloud shadows and haze). Most of the variance sits at large scales, as in
# real footage, so a small autoencoder learns it quickly (see tests/data/test_data_samples.py).
# ---------------------------------------------------------------------------------------------

_SKIES = (  # (zenith, horizon haze, cloud) in 0..1 RGB: clear noon, hazy, late afternoon, overcast
    ((0.22, 0.42, 0.74), (0.70, 0.80, 0.90), (0.97, 0.97, 0.98)),
    ((0.33, 0.52, 0.78), (0.80, 0.84, 0.88), (0.93, 0.93, 0.95)),
    ((0.30, 0.40, 0.66), (0.95, 0.75, 0.55), (0.98, 0.86, 0.75)),
    ((0.52, 0.57, 0.63), (0.78, 0.80, 0.82), (0.86, 0.87, 0.89)),
)
_GROUNDS = (  # (near field, far field / patches, detail accent) in 0..1 RGB
    ((0.30, 0.45, 0.16), (0.50, 0.56, 0.24), (0.20, 0.30, 0.10)),  # green meadow
    ((0.62, 0.56, 0.32), (0.48, 0.42, 0.24), (0.72, 0.66, 0.44)),  # dry grass / wheat
    ((0.80, 0.70, 0.50), (0.70, 0.58, 0.40), (0.88, 0.80, 0.62)),  # sand / desert
    ((0.36, 0.42, 0.20), (0.45, 0.34, 0.22), (0.26, 0.32, 0.14)),  # fields and soil
)
_FOLIAGE = ((0.12, 0.22, 0.09), (0.18, 0.27, 0.12), (0.16, 0.20, 0.10))
_TERRAINS = (  # height ramp stops (height in std units, RGB): water .. beach .. grass .. forest .. rock
    ((-1.8, (0.10, 0.24, 0.36)), (-0.5, (0.16, 0.38, 0.46)), (-0.3, (0.70, 0.66, 0.48)),
     (0.0, (0.44, 0.54, 0.26)), (0.9, (0.22, 0.36, 0.16)), (1.8, (0.46, 0.43, 0.37)), (2.6, (0.70, 0.70, 0.68))),
    ((-1.8, (0.12, 0.30, 0.40)), (-0.9, (0.18, 0.46, 0.50)), (-0.6, (0.84, 0.76, 0.56)),
     (0.2, (0.76, 0.60, 0.40)), (1.1, (0.60, 0.44, 0.30)), (1.9, (0.50, 0.38, 0.28)), (2.7, (0.66, 0.58, 0.48))),
    ((-1.8, (0.08, 0.20, 0.30)), (-0.4, (0.14, 0.32, 0.40)), (-0.2, (0.56, 0.56, 0.46)),
     (0.05, (0.32, 0.44, 0.24)), (1.0, (0.16, 0.29, 0.14)), (1.8, (0.38, 0.38, 0.35)), (2.6, (0.80, 0.81, 0.83))),
)
_OBJECT_COLOURS = ((0.72, 0.20, 0.14), (0.85, 0.78, 0.62), (0.25, 0.22, 0.20), (0.90, 0.55, 0.15),
                   (0.55, 0.40, 0.28), (0.92, 0.92, 0.90), (0.20, 0.35, 0.60), (0.45, 0.50, 0.25))
SCENES = ("landscape", "aerial")


def _noise(rng: np.random.Generator, h: int, w: int, scale: float, alpha: float,
           aniso: float = 1.0) -> np.ndarray:
    """(h, w) periodic noise, zero mean, unit std: amplitude ~ f^-alpha above 1/scale, flat below.

    ``scale`` is the feature size in pixels; ``aniso`` > 1 stretches features horizontally.
    """
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :] * aniso
    f = np.maximum(np.sqrt(fx * fx + fy * fy), 1.0 / scale)
    spec = np.fft.rfft2(rng.standard_normal((h, w))) * f ** -alpha
    spec[0, 0] = 0.0
    n = np.fft.irfft2(spec, s=(h, w))
    return (n / (n.std() + 1e-12)).astype(np.float32)


def _noise1d(rng: np.random.Generator, n: int, scale: float, alpha: float) -> np.ndarray:
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / scale)
    spec = np.fft.rfft(rng.standard_normal(n)) * f ** -alpha
    spec[0] = 0.0
    x = np.fft.irfft(spec, n=n)
    return (x / (x.std() + 1e-12)).astype(np.float32)


def _smooth(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lerp(a, b, t):
    return a + (b - a) * t


def _ramp(h: np.ndarray, stops) -> np.ndarray:
    """Height map (H, W) -> (H, W, 3) through piecewise-linear colour stops [(height, rgb), ...]."""
    xs = [s for s, _ in stops]
    return np.stack([np.interp(h, xs, [c[k] for _, c in stops]) for k in range(3)], -1).astype(np.float32)


def _jitter(rng: np.random.Generator, rgb, amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) * (1.0 + amount * rng.standard_normal(3)), 0.0, 1.0).astype(np.float32)


def _bilinear(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, wrap: bool = False) -> np.ndarray:
    """Sample (h, w, C) ``img`` at float pixel coords (H, W) -> (H, W, C) float32, clamped or wrapped."""
    h, w, C = img.shape
    if wrap:
        xs, ys = np.mod(xs, w), np.mod(ys, h)
        x0, y0 = xs.astype(np.intp), ys.astype(np.intp)
        x0, y0 = np.minimum(x0, w - 1), np.minimum(y0, h - 1)
        x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    else:  # clamped to [0, size - 2] + a fraction in [0, 1]: the right/bottom neighbour always exists
        xs, ys = np.clip(xs, 0, w - 1.0), np.clip(ys, 0, h - 1.0)
        x0, y0 = np.minimum(xs.astype(np.intp), w - 2), np.minimum(ys.astype(np.intp), h - 2)
        x1, y1 = x0 + 1, y0 + 1
    fx = (xs - x0)[..., None].astype(np.float32)
    fy = (ys - y0)[..., None].astype(np.float32)
    flat = img.reshape(-1, C)
    a, b = np.take(flat, y0 * w + x0, axis=0), np.take(flat, y0 * w + x1, axis=0)
    c, d = np.take(flat, y1 * w + x0, axis=0), np.take(flat, y1 * w + x1, axis=0)
    a += (b - a) * fx
    c += (d - c) * fx
    a += (c - a) * fy
    return a


def _bilinear_rows_cols(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``_bilinear`` for a grid that is axis-aligned: columns at ``xs`` (W,), rows at ``ys`` (H,)."""
    h, w, _ = img.shape
    xs, ys = np.clip(xs, 0, w - 1.0), np.clip(ys, 0, h - 1.0)
    x0, y0 = np.minimum(xs.astype(np.intp), w - 2), np.minimum(ys.astype(np.intp), h - 2)
    fx = (xs - x0).astype(np.float32)[None, :, None]
    fy = (ys - y0).astype(np.float32)[:, None, None]
    xa, xb = int(x0.min()), int(x0.max()) + 2
    rows = img[y0, xa:xb]
    rows += (img[y0 + 1, xa:xb] - rows) * fy  # (H, xb - xa, C)
    x0 = x0 - xa
    out = rows[:, x0]
    out += (rows[:, x0 + 1] - out) * fx
    return out


@dataclass
class _Camera:
    """Per-frame camera: centre (cx, cy) in world pixels, zoom (world px per screen px), roll (rad)."""

    cx: np.ndarray
    cy: np.ndarray
    zoom: np.ndarray
    roll: np.ndarray
    width: int
    height: int

    def coords(self, t: int, parallax: float = 1.0, drift=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
        """World coords (H, W) seen by screen pixels at frame ``t`` for a layer at ``parallax``."""
        cx = self.cx[0] + parallax * (self.cx[t] - self.cx[0]) + drift[0] * t
        cy = self.cy[0] + parallax * (self.cy[t] - self.cy[0]) + drift[1] * t
        z = 1.0 + parallax * (self.zoom[t] - 1.0)
        r = parallax * self.roll[t]
        u = np.arange(self.width, dtype=np.float32)[None, :] - (self.width - 1) / 2
        v = np.arange(self.height, dtype=np.float32)[:, None] - (self.height - 1) / 2
        c, s = np.cos(r) * z, np.sin(r) * z
        return cx + c * u - s * v, cy + s * u + c * v

    def to_screen(self, t: int, x: float, y: float) -> tuple[float, float]:
        dx, dy = x - self.cx[t], y - self.cy[t]
        c, s = np.cos(self.roll[t]), np.sin(self.roll[t])
        return ((c * dx + s * dy) / self.zoom[t] + (self.width - 1) / 2,
                (-s * dx + c * dy) / self.zoom[t] + (self.height - 1) / 2)


def _camera(rng: np.random.Generator, w: int, h: int, n: int, scene: str) -> _Camera:
    """A smooth path: a slowly curving pan, a gentle sway, maybe a zoom, a little roll from above."""
    t = np.arange(n, dtype=np.float64)
    size = float(min(w, h))
    speed = size * rng.uniform(0.008, 0.02)  # world px per frame
    if scene == "landscape":  # mostly horizontal pans, a little tilt, no roll
        ang = rng.uniform(-0.25, 0.25) + (np.pi if rng.random() < 0.5 else 0.0)
        roll_amp = 0.0
    else:
        ang = rng.uniform(0, 2 * np.pi)
        roll_amp = rng.uniform(0.0, 0.12)
    bend = rng.uniform(-0.4, 0.4) / max(n, 1)  # the path curves slowly
    heading = ang + bend * t
    cx = np.cumsum(speed * np.cos(heading)) - speed * np.cos(ang)
    cy = np.cumsum(speed * np.sin(heading)) - speed * np.sin(ang)
    wob = rng.uniform(0.0, 0.02) * size  # a hand-held sway, slow
    ph = rng.uniform(0, 2 * np.pi, 2)
    cx = cx + wob * np.sin(2 * np.pi * t / rng.uniform(28, 60) + ph[0])
    cy = cy + wob * np.sin(2 * np.pi * t / rng.uniform(28, 60) + ph[1])
    zoom_rate = rng.uniform(-0.006, 0.006) if rng.random() < 0.6 else 0.0
    zoom = np.exp(zoom_rate * t) * rng.uniform(0.9, 1.1)
    zoom = zoom / zoom[0]
    roll = roll_amp * np.sin(np.pi * t / max(n, 2)) * rng.choice([-1.0, 1.0])
    return _Camera(cx.astype(np.float32), cy.astype(np.float32), zoom.astype(np.float32),
                   roll.astype(np.float32), w, h)


@dataclass
class _Layer:
    rgba: np.ndarray  # (h, w, 4) float32 in world pixels, origin at (x0, y0)
    x0: float
    y0: float
    parallax: float = 1.0
    drift: tuple[float, float] = (0.0, 0.0)

    def sample(self, cam: _Camera, t: int) -> np.ndarray:
        """(H, W, 4) view of this layer at frame ``t``."""
        xs, ys = cam.coords(t, self.parallax, self.drift)
        xs, ys = xs - self.x0, ys - self.y0
        if self.parallax * cam.roll[t] == 0:  # no roll: rows and columns resample separately (fast)
            return _bilinear_rows_cols(self.rgba, xs[0], ys[:, 0])
        return _bilinear(self.rgba, xs, ys)


def _extent(cam: _Camera, n: int, parallax: float, drift=(0.0, 0.0), margin: float = 4.0):
    """World bounding box (x0, y0, w, h) of everything a layer shows over the clip."""
    xs, ys = [], []
    for t in range(n):
        x, y = cam.coords(t, parallax, drift)
        xs += [x.min(), x.max()]
        ys += [y.min(), y.max()]
    x0, y0 = np.floor(min(xs) - margin), np.floor(min(ys) - margin)
    return float(x0), float(y0), int(np.ceil(max(xs) + margin - x0)) + 1, int(np.ceil(max(ys) + margin - y0)) + 1


def _grid(x0: float, y0: float, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    return (x0 + np.arange(w, dtype=np.float32)[None, :]), (y0 + np.arange(h, dtype=np.float32)[:, None])


def _rgba(rgb: np.ndarray, alpha: np.ndarray | float = 1.0) -> np.ndarray:
    a = np.broadcast_to(np.asarray(alpha, np.float32), rgb.shape[:2])[..., None]
    return np.concatenate([rgb.astype(np.float32), a], -1)


def _landscape_layers(rng: np.random.Generator, cam: _Camera, n: int) -> tuple[list[_Layer], float]:
    """Sky, drifting clouds, mountains, tree line and fields; and the world y of the ground line."""
    size = float(min(cam.width, cam.height))
    zenith, haze, cloud = (_jitter(rng, c, 0.05) for c in _SKIES[rng.integers(len(_SKIES))])
    near, far, accent = (_jitter(rng, c) for c in _GROUNDS[rng.integers(len(_GROUNDS))])
    foliage = _jitter(rng, _FOLIAGE[rng.integers(len(_FOLIAGE))])
    horizon = float(cam.cy[0] + rng.uniform(-0.15, 0.1) * cam.height)  # world y of the ground line
    sky_h = cam.height * rng.uniform(0.5, 0.9)
    layers = []

    x0, y0, w, h = _extent(cam, n, 0.15)  # sky gradient, very far
    X, Y = _grid(x0, y0, w, h)
    ts = _smooth(0.0, 1.0, (horizon - Y) / sky_h) ** 0.7 + 0 * X
    layers.append(_Layer(_rgba(_lerp(haze, zenith, ts[..., None])), x0, y0, 0.15))

    drift = (rng.uniform(-0.4, 0.4) * size / 100, 0.0)  # clouds drift with the wind
    x0, y0, w, h = _extent(cam, n, 0.3, drift)
    X, Y = _grid(x0, y0, w, h)
    c = _noise(rng, h, w, size * rng.uniform(0.8, 1.6), rng.uniform(2.0, 2.4), aniso=rng.uniform(1.5, 3.0))
    cover = rng.uniform(-0.2, 1.0)
    a = _smooth(cover, cover + 1.4, c) * _smooth(horizon + 0.05 * size, horizon - 0.25 * size, Y)
    shade = _noise(rng, h, w, size * 0.3, 1.8)
    crgb = cloud * (0.92 + 0.04 * shade[..., None]) - 0.08 * _smooth(0.0, 2.0, c)[..., None]
    layers.append(_Layer(_rgba(crgb, 0.85 * a), x0, y0, 0.3, drift))

    x0, y0, w, h = _extent(cam, n, 0.4)  # hazy mountains, far
    X, Y = _grid(x0, y0, w, h)
    ridge = horizon - size * (rng.uniform(0.1, 0.3) + rng.uniform(0.05, 0.1) * _noise1d(rng, w, size * 0.8, 1.6))
    mtn = _lerp(haze, _lerp(foliage, zenith, 0.5), rng.uniform(0.35, 0.6))
    tex = _noise(rng, h, w, size * 0.3, 1.8)
    depth = _smooth(ridge[None, :] - 2, ridge[None, :] + 0.3 * size, Y)[..., None]
    mrgb = _lerp(mtn, _lerp(mtn, haze, 0.5), depth) * (1 + 0.05 * tex[..., None])
    layers.append(_Layer(_rgba(mrgb, _smooth(ridge[None, :] - 0.7, ridge[None, :] + 0.7, Y)), x0, y0, 0.4))

    x0, y0, w, h = _extent(cam, n, 1.0)  # tree line and fields, near
    X, Y = _grid(x0, y0, w, h)
    tall = rng.uniform(0.0, 0.05)  # a tree line (or none)
    trees = horizon - size * (0.01 + tall * np.abs(_noise1d(rng, w, size * 0.2, 1.5)))
    d = (Y - horizon) / size  # 0 at the ground line, grows towards the camera
    patches = _noise(rng, h, w, size * rng.uniform(0.8, 1.6), rng.uniform(2.0, 2.4), aniso=rng.uniform(2, 4))
    detail = _noise(rng, h, w, size * rng.uniform(0.06, 0.15), rng.uniform(1.2, 1.5), aniso=1.5)
    g = _lerp(near, far, _smooth(-1.0, 1.0, patches)[..., None])
    g = _lerp(g, accent, 0.25 * _smooth(0.5, 2.0, detail)[..., None]) * (1 + 0.06 * detail[..., None])
    g = g * (rng.uniform(0.6, 0.8) - 0.3 * _smooth(0.0, 1.2, d))[..., None]  # darker than the sky, and near
    g = _lerp(g, haze, (0.45 * np.exp(-np.maximum(d, 0) * 4.0))[..., None])  # aerial perspective
    if rng.random() < 0.5:  # a lake that mirrors the sky
        lake = _noise(rng, h, w, size * 1.2, 2.3, aniso=4.0)
        ripple = _noise(rng, h, w, size * 0.1, 1.4, aniso=6.0)
        water = _lerp(haze, zenith, 0.5) * (0.8 + 0.04 * ripple[..., None])
        wa = _smooth(0.7, 0.9, lake) * _smooth(0.02, 0.1, d)
        g = _lerp(g, water, wa[..., None])
    ftex = _noise(rng, h, w, size * 0.06, 1.3)
    lit = _smooth(0, 1, (Y - trees[None, :]) / (0.05 * size))  # tree crowns darker at the top
    frgb = foliage * (1 + 0.15 * ftex[..., None] + 0.15 * lit[..., None])
    ground = np.where((Y >= horizon)[..., None], g, frgb)
    layers.append(_Layer(_rgba(ground, _smooth(trees[None, :] - 0.7, trees[None, :] + 0.7, Y)), x0, y0, 1.0))
    return layers, horizon


def _aerial_layers(rng: np.random.Generator, cam: _Camera, n: int) -> tuple[list[_Layer], None]:
    """Hill-shaded terrain seen from above, drifting cloud shadows, haze; no ground line."""
    size = float(min(cam.width, cam.height))
    stops = sorted((s + rng.uniform(-0.08, 0.08), tuple(_jitter(rng, c, 0.05)))
                   for s, c in _TERRAINS[rng.integers(len(_TERRAINS))])
    x0, y0, w, h = _extent(cam, n, 1.0)
    smooth = _noise(rng, h, w, size * rng.uniform(1.2, 2.5), rng.uniform(2.4, 3.0)) + rng.uniform(-0.4, 0.6)
    hgt = smooth + 0.08 * _noise(rng, h, w, size * 0.15, 1.6)
    rgb = _ramp(hgt * 0.5, stops)  # spread out: gentle transitions between materials
    gy, gx = np.gradient(np.maximum(smooth, stops[1][0]) * size * 0.05)  # hill shading, sun from top left
    light = (-gx - gy) / np.sqrt(1 + gx * gx + gy * gy)
    detail = _noise(rng, h, w, size * rng.uniform(0.04, 0.1), 1.3)
    land = _smooth(stops[1][0], stops[2][0], hgt)
    rgb = rgb * (1 + (0.2 * light + 0.07 * detail * land)[..., None])
    layers = [_Layer(_rgba(rgb), x0, y0, 1.0)]
    drift = tuple(rng.uniform(-0.4, 0.4, 2) * size / 100)  # cloud shadows slide over the ground
    x0, y0, w, h = _extent(cam, n, 1.0, drift)
    c = _noise(rng, h, w, size * rng.uniform(0.8, 1.5), 2.2)
    cover = rng.uniform(0.3, 1.5)
    layers.append(_Layer(_rgba(np.zeros((h, w, 3), np.float32), 0.3 * _smooth(cover, cover + 1.0, c)),
                         x0, y0, 1.0, drift))
    x0, y0, w, h = _extent(cam, n, 0.0)  # haze towards a low sun, fixed to the lens (parallax 0)
    X, Y = _grid(x0 - cam.cx[0], y0 - cam.cy[0], w, h)
    th = rng.uniform(0, 2 * np.pi)
    g = _smooth(-0.4, 1.0, (X * np.cos(th) + Y * np.sin(th)) / (0.5 * np.hypot(cam.width, cam.height)))
    haze = _jitter(rng, (0.82, 0.84, 0.86), 0.04)
    layers.append(_Layer(_rgba(np.broadcast_to(haze, (h, w, 3)), rng.uniform(0.25, 0.45) * g), x0, y0, 0.0))
    return layers, None


@dataclass
class _Object:
    path: np.ndarray  # (T, 2) world centre per frame
    heading: np.ndarray  # (T,) radians
    rx: float
    ry: float
    rgb: np.ndarray
    tex: np.ndarray  # (s, s) periodic noise
    shadow: float


def _objects(rng: np.random.Generator, cam: _Camera, n: int, count: int, ground: float | None) -> list[_Object]:
    """``count`` objects on smooth paths through the middle of the clip; below world y ``ground`` if given."""
    size = float(min(cam.width, cam.height))
    out = []
    t = np.arange(n, dtype=np.float32)
    for _ in range(count):
        r = size * (rng.uniform(0.04, 0.11) if ground is not None else rng.uniform(0.03, 0.09))  # small from above
        rx, ry = r, r * rng.uniform(0.45, 0.95)
        speed = size * rng.uniform(0.005, 0.03)
        ang = rng.uniform(0, 2 * np.pi) if ground is None else rng.uniform(-0.3, 0.3) + np.pi * rng.integers(2)
        turn = rng.uniform(-1.0, 1.0) / max(n, 1)
        heading = ang + turn * t
        step = np.stack([np.cos(heading), np.sin(heading)], -1) * speed
        mid = n // 2
        sx, sy = rng.uniform(-0.3, 0.3) * cam.width, rng.uniform(-0.25, 0.3) * cam.height
        cx, cy = cam.cx[mid], cam.cy[mid]
        c, s = np.cos(cam.roll[mid]), np.sin(cam.roll[mid])
        centre = np.array([cx + c * sx - s * sy, cy + s * sx + c * sy], np.float32)
        path = np.cumsum(step, 0)
        path = path - path[mid] + centre
        bob = size * 0.01 * np.sin(2 * np.pi * t / rng.uniform(10, 30) + rng.uniform(0, 6.3))
        path[:, 1] += bob
        if ground is not None:  # walking on the ground, not flying over the hills
            path[:, 1] += max(0.0, ground + 1.2 * ry - float(path[:, 1].min()))
        base = _jitter(rng, _OBJECT_COLOURS[rng.integers(len(_OBJECT_COLOURS))], 0.08)
        out.append(_Object(path, heading, rx, ry, base, _noise(rng, 64, 64, 24, rng.uniform(1.0, 1.6)),
                           rng.uniform(0.25, 0.45)))
    return out


def _draw(frame: np.ndarray, ob: _Object, cam: _Camera, t: int) -> None:
    """Composite one soft-edged textured ellipse (and its shadow) onto (H, W, 3) ``frame`` in place."""
    H, W = frame.shape[:2]
    px, py = cam.to_screen(t, *ob.path[t])
    z = cam.zoom[t]
    rx, ry = ob.rx / z, ob.ry / z
    th = ob.heading[t] - cam.roll[t]
    off = np.array([0.25, 0.35]) * ry  # the sun is top left: shadow bottom right
    R = rx * 1.2 + abs(off).max() + 2
    xa, xb = int(max(0, np.floor(px - R))), int(min(W, np.ceil(px + R)))
    ya, yb = int(max(0, np.floor(py - R))), int(min(H, np.ceil(py + R)))
    if xa >= xb or ya >= yb:
        return
    dx = np.arange(xa, xb, dtype=np.float32)[None, :] - px
    dy = np.arange(ya, yb, dtype=np.float32)[:, None] - py
    c, s = np.cos(th), np.sin(th)

    def local(ox: float, oy: float):
        u = (c * (dx - ox) + s * (dy - oy)) / rx
        v = (-s * (dx - ox) + c * (dy - oy)) / ry
        return u, v, np.sqrt(u * u + v * v)

    soft = 1.2 / ry
    patch = frame[ya:yb, xa:xb]
    _, _, ds = local(*off)
    patch *= 1 - ob.shadow * _smooth(1 + 3 * soft, 1 - 3 * soft, ds)[..., None]
    u, v, d = local(0.0, 0.0)
    a = _smooth(1 + soft, 1 - soft, d)[..., None]
    tex = _bilinear(ob.tex[..., None], u * rx * z * 0.5 + 7, v * ry * z * 0.5 + 3, wrap=True)
    bulge = np.sqrt(np.clip(1 - d * d, 0, 1))[..., None]
    # shading in screen directions: light from the top left
    sx, sy = (c * u * rx - s * v * ry) / rx, (s * u * rx + c * v * ry) / ry
    shade = 0.75 + 0.35 * bulge + 0.15 * np.clip(-0.6 * sx - 0.8 * sy, -1, 1)[..., None]
    rgb = ob.rgb * shade * (1 + 0.18 * tex)
    patch[:] = patch * (1 - a) + rgb * a


def natural_frames(width: int, height: int, frames: int, seed: int, scene: str | None = None) -> np.ndarray:
    """A deterministic natural-looking clip: (frames, height, width, 3) uint8 RGB.

    ``scene`` is ``landscape`` or ``aerial`` (default: by the parity of ``seed``); everything else
    (palette, texture scales, camera path, objects) is drawn from ``seed``.
    """
    scene = scene or SCENES[seed % len(SCENES)]
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}: use one of {', '.join(SCENES)}")
    rng = np.random.default_rng([seed, 20240613])
    cam = _camera(rng, width, height, frames, scene)
    layers, ground = (_landscape_layers if scene == "landscape" else _aerial_layers)(rng, cam, frames)
    objs = _objects(rng, cam, frames, int(rng.integers(1, 4)), ground)
    exposure = (1.0 + rng.uniform(-0.03, 0.03) * np.sin(np.pi * np.arange(frames) / max(frames, 2))).astype(np.float32)
    u = (np.arange(width, dtype=np.float32)[None, :] - (width - 1) / 2) / (0.5 * max(width, height))
    v = (np.arange(height, dtype=np.float32)[:, None] - (height - 1) / 2) / (0.5 * max(width, height))
    vignette = (1 - 0.18 * (u * u + v * v))[..., None]
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        img = np.zeros((height, width, 3), np.float32)
        for layer in layers:  # back to front, "over"
            s = layer.sample(cam, t)
            img += (s[..., :3] - img) * s[..., 3:]
        for ob in objs:
            _draw(img, ob, cam, t)
        img *= vignette * (255 * exposure[t])
        out[t] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out


def _natural_source(source: str) -> dict | None:
    """``natural=seed=3:scene=aerial`` -> {"seed": 3, "scene": "aerial"}; None for a lavfi source."""
    name, _, opts = source.partition("=")
    if name != "natural":
        return None
    kw: dict = {"seed": 0, "scene": None}
    for item in filter(None, opts.split(":")):
        key, _, value = item.partition("=")
        if key not in kw:
            raise ValueError(f"source {source!r}: unknown option {key!r} (use seed=N, scene=landscape|aerial)")
        kw[key] = int(value) if key == "seed" else value
    return kw


def _ffmpeg(args: list[str], stdin: bytes | None = None) -> None:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", *args]
    r = subprocess.run(cmd, capture_output=True, input=stdin)
    if r.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({' '.join(cmd)}): {r.stderr.decode(errors='replace').strip()}")


def _raw_input(width: int, height: int, rate: int) -> list[str]:
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(rate), "-i", "pipe:0"]


def make_video(path: Path, source: str, width: int, height: int, frames: int, fps: int,
               *, faststart: bool = True) -> Path:
    """Encode ``frames`` frames of ``source`` at ``width``x``height`` to an H.264 mp4.

    ``source`` is ``natural=seed=N[:scene=S]`` (``natural_frames``) or an ffmpeg lavfi source.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    nat, raw = _natural_source(source), None
    if nat is not None:
        raw = natural_frames(width, height, frames, **nat).tobytes()
        inp = _raw_input(width, height, fps)
    else:
        name, _, opts = source.partition("=")
        inp = ["-f", "lavfi", "-i", f"{name}=size={width}x{height}:rate={fps}" + (f":{opts}" if opts else "")]
    args = [*inp, "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast",
            "-crf", "18", "-pix_fmt", "yuv420p", "-fflags", "+bitexact", "-map_metadata", "-1"]
    if faststart:
        args += ["-movflags", "+faststart"]
    _ffmpeg([*args, str(path)], raw)
    return path


def make_image(path: Path, source: str, width: int, height: int) -> Path:
    """Write one still of ``source`` (as for ``make_video``) at ``width``x``height`` as a JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nat, raw = _natural_source(source), None
    if nat is not None:
        raw = natural_frames(width, height, 1, **nat).tobytes()
        inp = [*_raw_input(width, height, 1), "-pix_fmt", "yuvj420p"]  # 4:2:0 like the lavfi stills
    else:
        inp = ["-f", "lavfi", "-i", f"{source}=size={width}x{height}:rate=1"]
    _ffmpeg([*inp, "-frames:v", "1", "-q:v", "2", "-fflags", "+bitexact", str(path)], raw)
    return path


def make_broken(dir: Path) -> dict[str, Path]:
    """One file per kind of bad input; returns reason-name -> path."""
    dir.mkdir(parents=True, exist_ok=True)
    out = {}
    out["empty"] = dir / "empty.mp4"
    out["empty"].write_bytes(b"")
    full = make_video(dir / "_full.mp4", "testsrc2", 128, 96, 24, 24, faststart=False)
    data = full.read_bytes()
    out["truncated"] = dir / "truncated.mp4"
    out["truncated"].write_bytes(data[: len(data) // 2])  # moov is at the end: header lost
    full.unlink()
    out["not_video"] = dir / "notes.mp4"
    out["not_video"].write_text("this is a text file, not a video\n" * 20)
    out["audio_only"] = dir / "tone.mp4"
    _ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", "-fflags", "+bitexact",
             str(out["audio_only"])])
    out["short"] = make_video(dir / "short.mp4", "testsrc2", 128, 96, SHORT_FRAMES, 24)
    out["bad_image"] = dir / "garbage.jpg"
    out["bad_image"].write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3)
    return out


def make_demo_set(root: str | Path, *, broken: bool = True) -> DemoSet:
    """Write the demo set under ``root`` (idempotent) and describe it."""
    root = Path(root)
    vdir, idir, bdir = root / "videos", root / "images", root / "broken"
    demo = DemoSet(root=root, csv=root / "webvid.csv", coco_json=root / "captions_demo.json",
                   image_dir=idir, video_dir=vdir)
    rows = []
    for i, (name, src, w, h, n, fps, caption) in enumerate(DEMO_VIDEOS):
        p = vdir / f"{name}.mp4"
        if not p.exists():
            make_video(p, src, w, h, n, fps)
        vid = str(1000 + i)
        demo.videos[name] = dict(path=p, id=f"webvid:{vid}", width=w, height=h, frames=n, fps=fps, caption=caption)
        rows.append([vid, f"videos/{name}.mp4", f"PT00H00M{n // fps:02d}S", "demo", caption])
    if broken:
        bad = make_broken(bdir)
        reasons = {"empty": "empty_file", "truncated": "unreadable", "not_video": "unreadable",
                   "audio_only": "no_video_stream", "short": "too_short"}
        for j, (kind, reason) in enumerate(reasons.items()):
            vid = str(2000 + j)
            rows.append([vid, f"broken/{bad[kind].name}", "PT00H00M01S", "broken", f"broken input: {kind}"])
            demo.broken[f"webvid:{vid}"] = reason
        rows.append(["2100", "broken/does_not_exist.mp4", "PT00H00M01S", "broken", "a missing file"])
        demo.broken["webvid:2100"] = "missing"
    with demo.csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        w.writerows(rows)
        if broken:
            f.write('2200,"unterminated quote,broken\n')  # a corrupt row: one field only
            demo.broken[f"webvid.csv:row{len(rows)}"] = "bad_csv_row"
    images, anns = [], []
    for k, (name, src, w, h, caption) in enumerate(DEMO_IMAGES):
        p = idir / f"{name}.jpg"
        if not p.exists():
            make_image(p, src, w, h)
        images.append({"id": 500 + k, "file_name": p.name, "width": w, "height": h})
        anns.append({"id": 9000 + k, "image_id": 500 + k, "caption": caption})
        demo.images[name] = dict(path=p, id=f"coco:{500 + k}", width=w, height=h, caption=caption)
    if broken:
        (idir / "garbage.jpg").write_bytes((bdir / "garbage.jpg").read_bytes())
        images.append({"id": 599, "file_name": "garbage.jpg", "width": 10, "height": 10})
        anns.append({"id": 9099, "image_id": 599, "caption": "an unreadable image"})
        demo.broken["coco:599"] = "unreadable_image"
    demo.coco_json.write_text(json.dumps({"images": images, "annotations": anns}, indent=1))
    return demo


def main() -> None:  # pragma: no cover - thin entry point
    import sys

    demo = make_demo_set(sys.argv[1] if len(sys.argv) > 1 else "demo_data")
    print(f"demo set in {demo.root}: {len(demo.videos)} videos, {len(demo.images)} images, "
          f"{len(demo.broken)} broken inputs\n  {demo.csv}\n  {demo.coco_json}::{demo.image_dir}")


if __name__ == "__main__":  # pragma: no cover
    main()
