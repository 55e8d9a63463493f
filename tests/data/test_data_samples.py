"""The embedded demo set's content (data_prep.samples.natural_frames): deterministic, moving like
video (a camera over a textured world, objects), natural multi-scale statistics, learnable."""

from __future__ import annotations

import subprocess

import decord
import numpy as np
import pytest

from data_prep.samples import (DEMO_IMAGES, DEMO_VIDEOS, SCENES, _bilinear, _bilinear_rows_cols, make_video,
                               natural_frames)


def _seed(source: str) -> int:
    assert source.startswith("natural=seed="), source
    return int(source.split("=")[-1])


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    """name -> (T, H, W, 3) uint8 for every good demo video and image (images: T = 1)."""
    out = {name: natural_frames(w, h, n, _seed(src)) for name, src, w, h, n, _, _ in DEMO_VIDEOS}
    out.update({name: natural_frames(w, h, 1, _seed(src)) for name, src, w, h, _ in DEMO_IMAGES})
    return out


def _block_mean(x: np.ndarray, f: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, C) cropped to multiples of f = (ft, fh, fw), and its block means broadcast back."""
    ft, fh, fw = f
    x = x[: x.shape[0] // ft * ft, : x.shape[1] // fh * fh, : x.shape[2] // fw * fw]
    T, H, W, C = x.shape
    b = x.reshape(T // ft, ft, H // fh, fh, W // fw, fw, C).mean((1, 3, 5), keepdims=True)
    return x, np.broadcast_to(b, (T // ft, ft, H // fh, fh, W // fw, fw, C)).reshape(x.shape)


def test_deterministic_per_seed_and_seeds_differ():
    a = natural_frames(96, 64, 5, seed=7)
    assert a.shape == (5, 64, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, natural_frames(96, 64, 5, seed=7))
    assert not np.array_equal(a, natural_frames(96, 64, 5, seed=8))
    land, aerial = natural_frames(96, 64, 3, 7, "landscape"), natural_frames(96, 64, 3, 7, "aerial")
    assert np.abs(land.astype(int) - aerial).mean() > 10
    with pytest.raises(ValueError, match="unknown scene"):
        natural_frames(8, 8, 1, 0, "moon")


def test_demo_clips_have_sizes_and_differ_in_palette(clips):
    for name, _, w, h, n, _, _ in DEMO_VIDEOS:
        assert clips[name].shape == (n, h, w, 3)
    means = np.array([c.reshape(-1, 3).mean(0) for c in clips.values()])  # (clips, 3)
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dist[np.triu_indices(len(means), 1)].min() > 3.0  # every clip has its own colours


def test_consecutive_frames_are_shifted_views_of_the_same_world(clips):
    for name, src, *_ in DEMO_VIDEOS:
        x = clips[name].astype(np.float32)
        corr = [np.corrcoef(x[t].ravel(), x[t + 1].ravel())[0, 1] for t in range(len(x) - 1)]
        diff = [np.abs(x[t + 1] - x[t]).mean() for t in range(len(x) - 1)]
        assert min(corr) > 0.9, (name, min(corr))  # smooth motion: neighbours nearly alike ...
        assert 0.5 < min(diff) and max(diff) < 15, (name, min(diff), max(diff))  # ... but never equal
        lag = [np.abs(x[k:] - x[:-k]).mean() for k in (1, 2, 4)]
        assert lag[0] < lag[1] < lag[2], (name, lag)  # change adds up over time (motion, not flicker)
        assert np.corrcoef(x[0].ravel(), x[-1].ravel())[0, 1] < min(corr) - 0.05, name
        if SCENES[_seed(src) % 2] == "aerial":  # the whole world moves with the camera: a global shift
            g0, g3, r = x[0].mean(-1), x[3].mean(-1), 12  # explains most of the change
            H, W = g0.shape
            still = np.abs(g3[r:H - r, r:W - r] - g0[r:H - r, r:W - r]).mean()
            err, dy, dx = min((np.abs(g0[r + dy:H - r + dy, r + dx:W - r + dx] - g3[r:H - r, r:W - r]).mean(), dy, dx)
                              for dy in range(-r, r + 1) for dx in range(-r, r + 1))
            assert (dy, dx) != (0, 0) and err < 0.6 * still, (name, err, still, dy, dx)


def test_multi_scale_texture_with_natural_spectrum(clips):
    for name, c in clips.items():
        f = c[:1].astype(np.float64)
        rms = []  # detail between block sizes s and 2s: each octave carries some, coarse ones more
        for s in (1, 2, 4, 8, 16):
            _, fine = _block_mean(f, (1, s, s))
            _, coarse = _block_mean(f, (1, 2 * s, 2 * s))
            h, w = coarse.shape[1:3]
            rms.append(float(np.sqrt(((fine[:, :h, :w] - coarse) ** 2).mean())))
        assert min(rms) > 1.5, (name, rms)
        assert max(rms[3:]) > 1.5 * rms[0], (name, rms)


def test_colour_statistics_are_not_flat(clips):
    for name, c in clips.items():
        px = c.reshape(-1, 3).astype(np.float64)
        std, mean = px.std(0), px.mean(0)
        assert std.min() > 15, (name, std)
        assert 40 < mean.min() and mean.max() < 215, (name, mean)
        assert np.ptp(mean) > 5, (name, mean)  # tinted (sky, grass, water), not grey
        sat = (px.max(1) - px.min(1)) / np.maximum(px.max(1), 1)
        assert sat.mean() > 0.15, (name, sat.mean())
        assert ((px == 0) | (px == 255)).mean() < 0.02, name  # exposed, hardly clipped


def test_large_scales_carry_most_of_the_variance(clips):
    """A coarse (16 frames x 16 x 16 px) block-mean picture beats the clip's mean colour by >= 3 dB:
    the content is learnable by a small autoencoder, like real footage and unlike white noise."""
    for name, c in clips.items():
        x, low = _block_mean(c.astype(np.float64), (min(16, len(c)), 16, 16))
        gain = 10 * np.log10(((x - x.mean((0, 1, 2))) ** 2).mean() / ((x - low) ** 2).mean())
        assert gain > 3.0, (name, gain)


def test_separable_resampling_equals_the_general_one():
    rng = np.random.default_rng(0)
    img = rng.random((40, 50, 4)).astype(np.float32)
    xs = np.linspace(-2.0, 52.0, 37, dtype=np.float32)
    ys = np.linspace(3.3, 41.0, 23, dtype=np.float32)
    general = _bilinear(img, np.broadcast_to(xs[None, :], (23, 37)), np.broadcast_to(ys[:, None], (23, 37)))
    assert np.allclose(_bilinear_rows_cols(img, xs, ys), general, atol=1e-5)


def test_demo_files_hold_the_generated_content(demo, tmp_path):
    v = demo.videos["testsrc_wide"]
    got = decord.VideoReader(str(v["path"])).get_batch(list(range(v["frames"]))).asnumpy()
    want = natural_frames(v["width"], v["height"], v["frames"], _seed(DEMO_VIDEOS[0][1]))
    assert got.shape == want.shape and np.abs(got.astype(int) - want).mean() < 3.0  # H.264 crf 18
    im = demo.images["img_landscape"]
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(im["path"]), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, check=True).stdout
    got = np.frombuffer(raw, np.uint8).reshape(1, 200, 300, 3)
    assert np.abs(got.astype(int) - natural_frames(300, 200, 1, _seed(DEMO_IMAGES[0][1]))).mean() < 4.0
    p = make_video(tmp_path / "a.mp4", "natural=seed=5:scene=landscape", 64, 48, 3, 24)
    assert decord.VideoReader(str(p)).get_batch([0, 1, 2]).asnumpy().shape == (3, 48, 64, 3)
    with pytest.raises(ValueError, match="unknown option"):
        make_video(tmp_path / "b.mp4", "natural=speed=3", 64, 48, 3, 24)
