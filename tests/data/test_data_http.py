"""WebVid ``contentUrl``s over http(s): a real HTTP server on 127.0.0.1 serving the demo set."""

from __future__ import annotations

import csv
import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from data_prep import manifest, storage
from data_prep.shard import refresh, shard

pytestmark = pytest.mark.slow


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def http_root(demo):
    """``http://127.0.0.1:PORT`` serving the demo set's folder (GET and HEAD, 404 for missing files)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(demo.root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_sources_give_the_same_dataset_as_local_files(demo, demo_cfg, ray_cluster, http_root, tmp_path):
    rows = list(csv.reader(demo.csv.read_text().splitlines()))
    header, body = rows[0], rows[1:]
    col = header.index("contentUrl")
    served = [r[:col] + [f"{http_root}/{r[col]}"] + r[col + 1:] if len(r) == len(header) else r for r in body]
    web_csv = tmp_path / "webvid_http.csv"
    with open(web_csv, "w", newline="") as f:
        csv.writer(f).writerows([header, *served])
    assert storage.info(f"{http_root}/videos/testsrc_wide.mp4")["size"] == \
           demo.videos["testsrc_wide"]["path"].stat().st_size

    cfg = demo_cfg()
    web = shard([str(web_csv)], str(tmp_path / "web"), cfg)
    local = shard([str(demo.csv)], str(tmp_path / "local"), cfg)
    # same clips, buckets, splits and error reasons; the 404 is a "missing" row like the absent file
    assert web.stats["samples"] == local.stats["samples"] > 0
    assert web.stats["errors_by_reason"] == local.stats["errors_by_reason"]
    assert web.stats["errors_by_reason"].get("missing") == 1
    v, vl = manifest.read_version(str(tmp_path / "web")), manifest.read_version(str(tmp_path / "local"))
    assert [(s["key"], s["bucket"], s["split"], s["frames"], s["sha256"]) for s in v["samples"]] == \
           [(s["key"], s["bucket"], s["split"], s["frames"], s["sha256"]) for s in vl["samples"]]
    assert all(s["uri"].startswith(http_root + "/videos/") for s in v["samples"])
    missing = [e for e in v["errors"] if e["reason"] == "missing"]
    assert missing[0]["uri"] == f"{http_root}/broken/does_not_exist.mp4"


class _AuthHandler(_QuietHandler):
    """Serves only requests with basic auth pvq:hunter2 and ``?token=t0ken`` (401/403 otherwise)."""

    def _allowed(self) -> bool:
        import base64

        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"pvq:hunter2").decode():
            self.send_error(401)
            return False
        if "token=t0ken" not in self.path:
            self.send_error(403)
            return False
        return True

    def do_GET(self):
        if self._allowed():
            super().do_GET()

    def do_HEAD(self):
        if self._allowed():
            super().do_HEAD()


def test_credentials_in_source_uris_are_used_never_stored(demo, demo_cfg, ray_cluster, tmp_path):
    """Issue 13, item 3: a contentUrl with a password and a token is fetched with them, while every
    file the job writes (manifests, sample json in the tars, _job.json) holds the redacted URI; a
    refresh with the same list sees no change, and a changed file is still noticed."""
    import shutil

    root = tmp_path / "site"
    (root / "videos").mkdir(parents=True)
    shutil.copy(demo.videos["testsrc_wide"]["path"], root / "videos" / "a.mp4")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_AuthHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://pvq:hunter2@127.0.0.1:{server.server_address[1]}"
        listing = tmp_path / "list.csv"
        listing.write_text("videoid,contentUrl,duration,page_dir,name\n"
                           f"1,{base}/videos/a.mp4?token=t0ken,PT1S,x,a test pattern\n"
                           f"2,{base}/videos/gone.mp4?token=t0ken,PT1S,x,missing\n")
        out, cfg = tmp_path / "out", demo_cfg()
        first = shard([str(listing)], str(out), cfg, keep_work=False)
        assert first.stats["samples"] > 0 and first.stats["errors_by_reason"] == {"missing": 1}

        def stored() -> bytes:  # every file as bytes, parquet decoded (its pages are compressed)
            return b"".join(json.dumps(manifest.read_table(str(p)), default=str).encode() if p.suffix == ".parquet"
                            else p.read_bytes() for p in out.rglob("*") if p.is_file())

        blob = stored()
        assert b"hunter2" not in blob and b"t0ken" not in blob
        v = manifest.read_version(str(out))
        assert {s["uri"] for s in v["sources"]} == {f"http://pvq:***@127.0.0.1:{server.server_address[1]}"
                                                     f"/videos/{n}.mp4?token=***" for n in ("a", "gone")}
        assert refresh([str(listing)], str(out), cfg).wrote is False  # same list: nothing changed

        shutil.copy(demo.videos["rgb_wide"]["path"], root / "videos" / "a.mp4")
        again = refresh([str(listing)], str(out), cfg)
        assert again.wrote and again.stats["changed"] == 1
        assert b"hunter2" not in stored() and b"t0ken" not in stored()
    finally:
        server.shutdown()
        server.server_close()
