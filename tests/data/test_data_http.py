"""WebVid ``contentUrl``s over http(s): a real HTTP server on 127.0.0.1 serving the demo set."""

from __future__ import annotations

import csv
import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from data_prep import manifest, storage
from data_prep.shard import shard

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
