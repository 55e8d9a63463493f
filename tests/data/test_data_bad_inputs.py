"""The hostile-input corpus of issue 13 (items 2 and 5-12): each input becomes an error row with a
clear reason or is handled correctly, and every good input still lands.

One shard job runs over a corpus built here: a WebVid CSV with an unterminated quote in the middle,
a field over 128 KiB, ftp:// / github:// / unknown schemes, an empty contentUrl, a repeated videoid
(for another file, and for the same file with another caption),
a host outside ``allowed_hosts``, an allowed host that redirects to another one (and one that
redirects to itself), an HLS and a concat playlist saved as ``.mp4``, a rotated video, a caption that
legitimately spans two lines, and an unterminated quote right before such a caption; two folders
that both hold ``clip.mp4``; a folder with a PNG decompression bomb beside a good photo; a single
file whose name starts with ``-``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import decord
import numpy as np
import pytest

from data_prep import manifest, sources
from data_prep.probe import probe
from data_prep.samples import make_image, make_video
from data_prep.shard import ShardJobError, output_lock, shard

pytestmark = pytest.mark.slow

BIG = 140 * 1024  # over csv's 128 KiB field limit


def _png_bomb(path: Path, side: int = 30000) -> Path:
    """A valid PNG that declares ``side`` x ``side`` 1-bit pixels of zeros (~110 KB on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp, parts = zlib.compressobj(9), []
    row = b"\x00" * (1 + (side + 7) // 8)
    for _ in range(side):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """Two http servers on 127.0.0.1: ``allowed`` serves ``/video.mp4`` and redirects ``/out/*`` to
    ``other`` (outside ``allowed_hosts``) and ``/in/*`` to its own ``/video.mp4``; ``other`` counts
    the requests it gets."""
    video = make_video(tmp_path_factory.mktemp("served") / "v.mp4", "testsrc", 64, 64, 16, 10).read_bytes()
    requests = {"other": 0}

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code: int, body: bytes = b"", location: str | None = None) -> None:
            self.send_response(code)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

    class Other(Quiet):
        def do_GET(self):
            requests["other"] += 1
            self.reply(200, video)

        do_HEAD = do_GET

    other = ThreadingHTTPServer(("127.0.0.1", 0), Other)

    class Allowed(Quiet):
        def do_GET(self):
            if self.path.startswith("/out/"):
                self.reply(302, location=f"http://127.0.0.1:{other.server_port}/video.mp4")
            elif self.path.startswith("/in/"):
                self.reply(302, location="/video.mp4")
            else:
                self.reply(200, video)

        do_HEAD = do_GET

    allowed = ThreadingHTTPServer(("127.0.0.1", 0), Allowed)
    for server in (allowed, other):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"allowed": f"127.0.0.1:{allowed.server_port}", "other": f"127.0.0.1:{other.server_port}",
           "requests": requests}
    for server in (allowed, other):
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, hosts):
    root = tmp_path_factory.mktemp("hostile")
    c = root / "csv"
    for i, name in enumerate(("testsrc2", "smptebars", "mandelbrot", "rgbtestsrc", "testsrc", "yuvtestsrc",
                              "testsrc2", "smptebars")):
        make_video(c / f"good{i}.mp4", name, 64, 64, 16, 10)
    make_video(c / "dup.mp4", "mandelbrot", 64, 64, 16, 10)
    make_video(c / "multi.mp4", "smptebars", 64, 64, 16, 10)
    make_video(c / "multi2.mp4", "rgbtestsrc", 64, 64, 16, 10)
    # HLS playlist saved as .mp4: it points at a segment of another video
    make_video(c / "secret.mp4", "rgbtestsrc", 64, 64, 16, 10)
    _ffmpeg("-i", str(c / "secret.mp4"), "-c", "copy", "-f", "hls", "-hls_time", "100", str(c / "list.m3u8"))
    (c / "list.m3u8").rename(c / "hls.mp4")
    (c / "secret.mp4").unlink()
    # rotated video: coded 96x64, displayed 64x96 (an asymmetric pattern, lossless, so orientation shows)
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64:rate=10", "-frames:v", "16", "-c:v", "libx264", "-qp", "0",
            "-pix_fmt", "yuv444p", str(c / "upright.mp4"))
    _ffmpeg("-i", str(c / "upright.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(c / "rot.mp4"))
    lines = [
        "videoid,contentUrl,duration,page_dir,name",
        "100,good0.mp4,PT1S,d,first good row",
        '101,good1.mp4,PT1S,d,"a quote that is never closed',
        "102,good2.mp4,PT1S,d,the row after the bad quote",
        '103,good3.mp4,PT1S,d,"' + "x" * BIG + '"',
        "104,good4.mp4,PT1S,d,the row after the huge field",
        "105,ftp://127.0.0.1/a.mp4,PT1S,d,ftp",
        "106,github://org:repo@/a.mp4,PT1S,d,github",
        "107,weird+scheme://x/a.mp4,PT1S,d,unknown scheme",
        "108,,PT1S,d,empty url",
        "100,dup.mp4,PT1S,d,the same videoid for another file",
        "109,http://127.0.0.1:9/remote.mp4,PT1S,d,host not allowed",
        "110,hls.mp4,PT1S,d,a playlist",
        "111,rot.mp4,PT1S,d,rotated",
        '112,multi.mp4,PT1S,d,"a caption on',
        'two lines"',
        "113,good5.mp4,PT1S,d,row after the multi-line caption",
        '114,good6.mp4,PT1S,d,"a quote never closed, right before a multi-line caption',
        '115,multi2.mp4,PT1S,d,"its opening quote must not close the bad one,',
        'and this line is its own"',
        f"116,http://{hosts['allowed']}/out/r.mp4,PT1S,d,an allowed host redirecting to another one",
        f"117,http://{hosts['allowed']}/in/r.mp4,PT1S,d,an allowed host redirecting to itself",
        "118,good7.mp4,PT1S,d,last row",
        "119,concat.mp4,PT1S,d,a concat playlist",
        "100,good0.mp4,PT1S,d,the first file listed again with another caption",
    ]
    (c / "concat.mp4").write_text("ffconcat version 1.0\nfile 'good0.mp4'\n")
    (c / "list.csv").write_text("\n".join(lines) + "\n")
    make_video(root / "a" / "clip.mp4", "testsrc2", 64, 64, 16, 10)
    make_video(root / "b" / "clip.mp4", "smptebars", 64, 64, 16, 10)
    (root / "img").mkdir()
    _png_bomb(root / "img" / "bomb.png")
    make_image(root / "img" / "ok.jpg", "testsrc2", 64, 64)
    make_video(root / "-dash.mp4", "testsrc2", 64, 64, 16, 10)
    return root


@pytest.fixture(scope="module")
def built(corpus, hosts, demo_cfg, ray_cluster, tmp_path_factory):
    cfg = demo_cfg("encode.codec=lossless", f"allowed_hosts=[localhost,'{hosts['allowed']}']",
                   "shards.val_fraction=0.0")
    out = tmp_path_factory.mktemp("hostile-out") / "out"
    cwd = os.getcwd()
    os.chdir(corpus)  # the single-file spec is the relative name "-dash.mp4"
    try:
        result = shard([str(corpus / "csv" / "list.csv"), str(corpus / "a"), str(corpus / "b"),
                        str(corpus / "img"), "-dash.mp4"], str(out), cfg)
    finally:
        os.chdir(cwd)
    v = manifest.read_version(str(out))
    return cfg, out, result, v


def _errors(v) -> dict[str, tuple[str, str]]:
    return {e["source_id"]: (e["reason"], e["detail"]) for e in v["errors"]}


def _landed(v) -> dict[str, dict]:
    return {s["source_id"]: s for s in v["samples"]}


def test_decompression_bomb_is_an_error_row_and_the_photo_beside_it_lands(built):
    _, _, _, v = built
    reason, detail = _errors(v)["file:bomb.png"]
    assert reason == "image_too_large" and "bomb.png" in detail and "900000000" in detail
    assert "file:ok.jpg" in _landed(v)


def test_csv_rows_fail_one_by_one_and_every_good_row_lands(built):
    _, _, _, v = built
    err, landed = _errors(v), _landed(v)
    assert err["list.csv:row1"][0] == "bad_csv_row" and "unterminated quote" in err["list.csv:row1"][1]
    assert err["list.csv:row3"][0] == "bad_csv_row" and "field larger than field limit" in err["list.csv:row3"][1]
    assert err["list.csv:row8"][0] == "bad_csv_row" and "empty contentUrl" in err["list.csv:row8"][1]
    for vid, scheme in (("105", "ftp"), ("106", "github"), ("107", "weird+scheme")):
        assert err[f"webvid:{vid}"][0] == "unsupported_scheme" and f"{scheme}://" in err[f"webvid:{vid}"][1]
    for vid in ("102", "104", "111", "112", "113", "115", "118"):
        assert f"webvid:{vid}" in landed, vid
    assert landed["webvid:102"]["caption"] == "the row after the bad quote"  # not swallowed by row 1
    assert landed["webvid:112"]["caption"] == "a caption on\ntwo lines"  # a real multi-line field still works
    assert landed["webvid:113"]["caption"] == "row after the multi-line caption"
    # an unterminated quote right before a multi-line caption: one error row, the next row intact
    assert err["list.csv:row15"][0] == "bad_csv_row" and "unterminated quote" in err["list.csv:row15"][1]
    assert "webvid:114" not in landed and "webvid:114" not in err
    assert landed["webvid:115"]["caption"] == ("its opening quote must not close the bad one,\n"
                                               "and this line is its own")
    assert landed["webvid:118"]["caption"] == "last row"
    assert not any(k.startswith("list.csv:row") and k not in ("list.csv:row1", "list.csv:row3", "list.csv:row8",
                                                              "list.csv:row15") for k in err), sorted(err)


def test_duplicate_ids_are_made_unique_and_nothing_is_dropped(built, corpus):
    _, _, _, v = built
    landed = _landed(v)
    by_uri = {s["uri"]: s["source_id"] for s in v["samples"]}
    dup = [by_uri[str(corpus / "csv" / n)] for n in ("good0.mp4", "dup.mp4")]
    assert all(d.startswith("webvid:100@") for d in dup) and dup[0] != dup[1]
    clips = [by_uri[str(corpus / d / "clip.mp4")] for d in ("a", "b")]
    assert all(c.startswith("file:clip.mp4@") for c in clips) and clips[0] != clips[1]
    assert len({s["key"] for s in v["samples"]}) == len(v["samples"])
    assert "webvid:100" not in landed and "file:clip.mp4" not in landed
    # the same file under the same videoid again, with another caption: kept once, the repeat is a row
    assert landed[dup[0]]["caption"] == "first good row"
    reason, detail = _errors(v)[f"{dup[0]}#2"]
    assert reason == "duplicate_row" and "kept the first listing ('first good row')" in detail


def test_host_allow_list_refuses_before_any_request(built):
    _, _, _, v = built
    reason, detail = _errors(v)["webvid:109"]
    assert reason == "host_not_allowed" and "127.0.0.1" in detail


def test_a_redirect_to_a_host_outside_the_allow_list_is_not_followed(built, hosts):
    _, _, _, v = built
    reason, detail = _errors(v)["webvid:116"]
    assert reason == "host_not_allowed" and f"redirects to http://{hosts['other']}/" in detail
    assert hosts["requests"]["other"] == 0  # refused on the redirect response, before any request there
    assert "webvid:116" not in _landed(v)
    assert _landed(v)["webvid:117"]["uri"] == f"http://{hosts['allowed']}/in/r.mp4"  # same host: followed


def test_playlist_with_a_video_extension_is_refused(built):
    _, _, _, v = built
    reason, detail = _errors(v)["webvid:110"]
    assert reason == "unsupported_format" and "hls" in detail
    reason, detail = _errors(v)["webvid:119"]
    assert reason == "unsupported_format" and "concat" in detail
    assert not any("secret" in s["uri"] or s["source_id"] == "webvid:110" for s in v["samples"])


def test_rotated_video_is_probed_cut_and_encoded_upright(built, corpus):
    from pvq_model.eval.video_io import read_video

    _, out, _, v = built
    assert probe(str(corpus / "csv" / "rot.mp4")).rotation in (90, 270)
    p = probe(str(corpus / "csv" / "rot.mp4"))
    assert (p.width, p.height) == (64, 96)
    s = _landed(v)["webvid:111"]
    assert (s["src_width"], s["src_height"]) == (64, 96)
    shown, _ = read_video(corpus / "csv" / "rot.mp4")  # (T, 96, 64, 3) as displayed
    upright, _ = read_video(corpus / "csv" / "upright.mp4")
    assert shown.shape == (16, 96, 64, 3)
    assert any(np.array_equal(shown, np.rot90(upright, k, axes=(1, 2))) for k in (1, -1))
    with tarfile.open(out / s["shard"]) as tf:
        data = tf.extractfile(f"{s['key']}.mp4").read()
    got = decord.VideoReader(io.BytesIO(data)).get_batch(list(range(s["frames"]))).asnumpy()
    w, h = (int(x) for x in s["bucket"].split("x"))
    assert got.shape[1:3] == (h, w) == (64, 64)  # a square bucket: centre rows of the displayed picture
    ref = shown[s["start"]:s["start"] + s["frames"], 16:80]
    assert np.abs(got.astype(int) - ref).mean() < 3.0


def test_single_file_named_like_an_option_lands(built):
    _, _, _, v = built
    assert "file:-dash.mp4" in _landed(v)
    assert not any(e["source_id"] == "file:-dash.mp4" for e in v["errors"])


def test_the_job_records_every_listed_input(built):
    _, _, result, v = built
    ids = {s["id"] for s in v["sources"]}
    assert ids == set(_landed(v)) | set(_errors(v))
    assert result.stats["errors"] == len(v["errors"])


# ---- crash, change and concurrency (items 10-12) --------------------------------------------


@pytest.fixture(scope="module")
def nested(demo_cfg, ray_cluster, tmp_path_factory):
    """A folder source with ``--out`` inside it, sharded once with the work cache kept (as a kill -9
    would leave it), then made unfinished again by removing LATEST."""
    root = tmp_path_factory.mktemp("nested")
    src = root / "src"
    for i, name in enumerate(("testsrc2", "smptebars", "mandelbrot")):
        make_video(src / f"v{i}.mp4", name, 64, 64, 16, 10)
    out = src / "out"
    cfg = demo_cfg()
    first = shard([str(src)], str(out), cfg, keep_work=True)
    return cfg, src, out, first


def test_output_inside_a_source_folder_is_not_ingested(nested):
    cfg, src, out, first = nested
    assert first.stats["sources"] == 3
    assert list((out / "_work").rglob("*.mp4"))  # the job's own clips sit under the source folder
    assert all(not i.uri.startswith(str(out)) for i in sources.list_sources([str(src)], exclude=[str(out)]))
    (out / "LATEST").unlink()  # the version is unfinished again (as after kill -9 before LATEST)
    again = shard([str(src)], str(out), cfg, keep_work=True)
    assert again.stats["sources"] == 3 and again.stats["samples"] == first.stats["samples"]
    assert not any(str(out) in s["uri"] for s in manifest.read_version(str(out))["sources"])


def test_changed_inputs_of_an_unfinished_version_are_refused_clearly(nested):
    cfg, src, out, first = nested
    (out / "LATEST").unlink(missing_ok=True)
    moved = src.parent / "v1.mp4"
    shutil.move(src / "v1.mp4", moved)
    try:
        with pytest.raises(ShardJobError, match="changed since it was started"):
            shard([str(src)], str(out), cfg)
    finally:
        shutil.move(moved, src / "v1.mp4")
    done = shard([str(src)], str(out), cfg)  # the same files again: it finishes
    assert done.stats["sources"] == 3


def test_a_second_job_on_the_same_output_exits_with_a_message(nested, tmp_path):
    cfg, src, _, _ = nested
    out = tmp_path / "locked"
    with output_lock(str(out)):
        with pytest.raises(ShardJobError, match="being written by another shard job .pid"):
            shard([str(src)], str(out), cfg)
    assert not (out / "LATEST").exists()
    res = shard([str(src / "v0.mp4")], str(out), cfg)  # free again
    assert res.stats["samples"] >= 1
    assert json.loads((out / res.version / "_stats.json").read_text())["sources"] == 1


def test_s3_output_lock_is_a_conditional_put(s3_server):
    import boto3

    from data_prep import storage

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="locks")
    with output_lock("s3://locks/ds"):
        assert "pid" in storage.read_text("s3://locks/ds/.lock")
        with pytest.raises(ShardJobError, match="being written by another shard job .pid .*delete s3://locks/ds/.lock"):
            with output_lock("s3://locks/ds"):
                pass
    assert not storage.exists("s3://locks/ds/.lock")
    with output_lock("s3://locks/ds"):  # free again
        pass


def test_s3_lock_of_a_killed_job_of_this_host_is_taken_over(s3_server, caplog):
    """A job killed with -9 leaves its S3 lock. A rerun on the same host, where that process is gone,
    takes it over (saying so); the lock of a live process, or of a job on another host, is refused."""
    import boto3

    from data_prep import storage

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="stale")
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = os.uname().nodename
    for holder, taken in ((f"pid {gone.pid} on {host}, since 2026-01-01 00:00:00", True),
                          (f"pid {os.getppid()} on {host}, since 2026-01-01 00:00:00", False),  # alive
                          (f"pid {gone.pid} on some-other-host, since 2026-01-01 00:00:00", False)):
        storage.write_bytes("s3://stale/ds/.lock", holder.encode())
        if taken:
            with caplog.at_level("WARNING", logger="data_prep.shard"), output_lock("s3://stale/ds"):
                assert storage.read_text("s3://stale/ds/.lock").startswith(f"pid {os.getpid()} on {host},")
            assert f"took over the lock of a killed shard job ({holder})" in caplog.text
            assert not storage.exists("s3://stale/ds/.lock")
        else:
            with pytest.raises(ShardJobError, match="being written by another shard job"):
                with output_lock("s3://stale/ds"):
                    pass
            assert storage.read_text("s3://stale/ds/.lock") == holder  # left as it was
