"""Checked, resumable downloads against a local HTTP server on 127.0.0.1 (thread, ephemeral port)."""
import hashlib
import http.server
import os
import re
import threading

import numpy as np
import pytest

from gruengine.data import download as dl
from gruengine.errors import DataError


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append(self.headers.get("Range"))
        if self.path != "/file.bin":
            self.send_error(404, "Not Found")
            return
        data, start = srv.payload, 0
        m = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if m and srv.ranges:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drops:  # send part of the body, then drop the connection
            cut = srv.drops.pop(0)
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload = np.random.default_rng(0).bytes(300_000)
    srv.ranges, srv.drops, srv.requests = True, [], []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/file.bin"
    srv.sha = hashlib.sha256(srv.payload).hexdigest()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(5)


def test_success(server, tmp_path, capsys):
    dest = str(tmp_path / "sub" / "file.bin")
    assert dl.download(server.url, dest, server.sha, size=len(server.payload)) == dest
    assert open(dest, "rb").read() == server.payload
    assert not os.path.exists(dest + ".part")
    assert "file.bin" in capsys.readouterr().err  # the progress line
    # a correct file already in place is not fetched again
    n = len(server.requests)
    dl.download(server.url, dest, server.sha, progress=False)
    assert len(server.requests) == n


def test_interrupted_download_resumes(server, tmp_path):
    dest = str(tmp_path / "file.bin")
    server.drops = [120_000]
    with pytest.raises(DataError, match=r"download failed after 1 attempt.*120000 bytes kept.*run again to resume"):
        dl.download(server.url, dest, server.sha, progress=False, retries=0)
    assert os.path.getsize(dest + ".part") == 120_000 and not os.path.exists(dest)
    dl.download(server.url, dest, server.sha, size=len(server.payload), progress=False)
    assert server.requests == [None, "bytes=120000-"]
    assert open(dest, "rb").read() == server.payload


def test_retries_resume_within_one_call(server, tmp_path):
    dest = str(tmp_path / "file.bin")
    server.drops = [50_000, 70_000]
    dl.download(server.url, dest, server.sha, progress=False, retries=3)
    assert server.requests == [None, "bytes=50000-", "bytes=120000-"]
    assert open(dest, "rb").read() == server.payload


def test_restart_when_range_ignored(server, tmp_path):
    dest = str(tmp_path / "file.bin")
    with open(dest + ".part", "wb") as f:
        f.write(b"stale bytes from another file" * 100)
    server.ranges = False
    dl.download(server.url, dest, server.sha, size=len(server.payload), progress=False)
    assert server.requests == ["bytes=2900-"]  # asked to resume, got a full 200 answer
    assert open(dest, "rb").read() == server.payload


def test_complete_part_file_is_only_checked(server, tmp_path):
    dest = str(tmp_path / "file.bin")
    with open(dest + ".part", "wb") as f:
        f.write(server.payload)
    dl.download(server.url, dest, server.sha, progress=False)  # server answers 416
    assert open(dest, "rb").read() == server.payload and server.requests == [f"bytes={len(server.payload)}-"]


def test_bad_checksum_deletes_the_file(server, tmp_path):
    dest = str(tmp_path / "file.bin")
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DataError, match=f"SHA-256 mismatch \\(expected {wrong}, got {server.sha}\\)"):
        dl.download(server.url, dest, wrong, progress=False)
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")


def test_wrong_size_and_http_errors(server, tmp_path):
    dest = str(tmp_path / "file.bin")
    with pytest.raises(DataError, match=f"expected {len(server.payload) + 1} bytes, got {len(server.payload)}"):
        dl.download(server.url, dest, server.sha, size=len(server.payload) + 1, progress=False)
    assert not os.path.exists(dest + ".part")
    with pytest.raises(DataError, match="HTTP error 404"):
        dl.download(server.url.replace("file.bin", "missing"), dest, server.sha, progress=False)
    with pytest.raises(ValueError, match="sha256: expected 64 hex digits"):
        dl.download(server.url, dest, "abc", progress=False)


def test_imdb_constants_and_cache_dir(monkeypatch, tmp_path, server):
    assert dl.IMDB_URL == "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
    assert dl.IMDB_SIZE == 84_125_825 and len(dl.IMDB_SHA256) == 64
    monkeypatch.setenv("GRUENGINE_DATA", str(tmp_path / "cache"))
    assert dl.data_dir() == str(tmp_path / "cache")
    with pytest.raises(DataError, match="gruengine data download imdb"):
        dl.find_imdb()
    monkeypatch.delenv("GRUENGINE_DATA")
    assert dl.data_dir() == os.path.join(os.path.expanduser("~"), ".cache", "gruengine")
    monkeypatch.setattr(dl, "IMDB_URL", server.url)
    monkeypatch.setattr(dl, "IMDB_SIZE", len(server.payload))
    monkeypatch.setattr(dl, "IMDB_SHA256", server.sha)
    path = dl.download_imdb(str(tmp_path / "d"), progress=False)
    assert path == str(tmp_path / "d" / "aclImdb_v1.tar.gz") and open(path, "rb").read() == server.payload
