"""Checked, resumable downloads into the data cache.

    from gruengine.data.download import download_imdb
    path = download_imdb()          # ~/.cache/gruengine/aclImdb_v1.tar.gz (or $GRUENGINE_DATA/...)

``download`` writes to ``<dest>.part``, resumes a partial file with an HTTP Range request
(restarting cleanly when the server ignores Range), checks the size and SHA-256, deletes a file
whose checksum differs, and only then renames it into place (atomic on one filesystem).
"""
import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request

from ..errors import DataError

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_SIZE = 84125825
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
IMDB_FILE = "aclImdb_v1.tar.gz"

_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def data_dir():
    """The cache folder: $GRUENGINE_DATA if set, else ~/.cache/gruengine."""
    return os.environ.get("GRUENGINE_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "gruengine")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download(url, dest_path, sha256, size=None, progress=True, *, retries=3, timeout=60.0):
    """Fetch ``url`` to ``dest_path`` and verify it; returns ``dest_path``.

    A ``dest_path`` already there with the right checksum is kept as is. A broken connection
    is retried ``retries`` times, each time resuming from the bytes already in ``<dest>.part``;
    if all fail, DataError is raised and the partial file stays for the next call to resume.
    """
    sha256 = str(sha256).lower()
    if not _HEX64.match(sha256):
        raise ValueError(f"sha256: expected 64 hex digits, got {sha256!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(f"size: expected a byte count >= 0 or None, got {size!r}")
    dest_path = os.fspath(dest_path)
    if os.path.isfile(dest_path) and sha256_file(dest_path) == sha256:
        return dest_path
    folder = os.path.dirname(os.path.abspath(dest_path))
    os.makedirs(folder, exist_ok=True)
    part = dest_path + ".part"
    attempt = 0
    while True:
        try:
            _fetch(url, part, size, progress, timeout)
            break
        except (OSError, http.client.HTTPException, _Incomplete) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code not in (408, 429, 500, 502, 503, 504):
                raise DataError(f"{url}: HTTP error {e.code} {e.reason}") from None
            attempt += 1
            if attempt > retries:
                have = os.path.getsize(part) if os.path.exists(part) else 0
                reason = " ".join(str(getattr(e, "reason", e)).split()) or type(e).__name__
                kept = f"; {have} bytes kept in {part}, run again to resume" if have else ""
                raise DataError(f"{url}: download failed after {attempt} attempt(s) ({reason}){kept}") from None
            time.sleep(min(0.2 * attempt, 2.0))
    got_size = os.path.getsize(part)
    if size is not None and got_size != size:
        os.remove(part)
        raise DataError(f"{url}: expected {size} bytes, got {got_size}; the partial file was deleted")
    digest = sha256_file(part)
    if digest != sha256:
        os.remove(part)
        raise DataError(f"{url}: SHA-256 mismatch (expected {sha256}, got {digest}); the download was deleted")
    os.replace(part, dest_path)
    return dest_path


class _Incomplete(Exception):
    pass


def _fetch(url, part, size, progress, timeout):
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if size is not None and have > size:
        os.remove(part)
        have = 0
    if size is not None and have == size:
        return  # complete from an earlier run; the checksum decides
    req = urllib.request.Request(url, headers={"User-Agent": "gruengine"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left past our offset: let the checks decide
            return
        raise
    with resp:
        status = resp.status
        if have and status == 206 and not _range_starts_at(resp.headers.get("Content-Range"), have):
            resp.close()  # an unexpected range: safer to start over
            os.remove(part)
            raise _Incomplete("server sent an unexpected byte range; restarting")
        if status != 206:
            have = 0  # server ignored Range: a clean restart
        length = resp.headers.get("Content-Length")
        total = (have + int(length)) if length and length.isdigit() else size
        bar = _Progress(os.path.basename(part[:-5]), total, have) if progress else None
        with open(part, "ab" if have else "wb") as f:
            done = have
            while True:
                block = resp.read(_CHUNK)
                if not block:
                    break
                f.write(block)
                done += len(block)
                if bar:
                    bar.update(done)
            f.flush()
            os.fsync(f.fileno())
        if bar:
            bar.close()
        if total is not None and done < total:
            raise _Incomplete(f"connection closed after {done} of {total} bytes")


def _range_starts_at(content_range, offset):
    m = re.match(r"bytes\s+(\d+)-", content_range or "")
    return m is not None and int(m.group(1)) == offset


class _Progress:
    """A one-line progress display on stderr, redrawn at most 10 times a second."""

    def __init__(self, name, total, start):
        self.name, self.total, self.last = name, total, 0.0
        self.update(start)

    def update(self, done):
        now = time.monotonic()
        if now - self.last < 0.1 and (self.total is None or done < self.total):
            return
        self.last = now
        mb = done / 1e6
        if self.total:
            pct = 100.0 * done / self.total
            sys.stderr.write(f"\r{self.name}: {mb:.1f}/{self.total / 1e6:.1f} MB ({pct:.0f}%)")
        else:
            sys.stderr.write(f"\r{self.name}: {mb:.1f} MB")
        sys.stderr.flush()

    def close(self):
        sys.stderr.write("\n")
        sys.stderr.flush()


def download_imdb(dest=None, progress=True):
    """Download the official IMDB archive into folder ``dest`` (default ``data_dir()``); returns its path."""
    folder = data_dir() if dest is None else os.fspath(dest)
    return download(IMDB_URL, os.path.join(folder, IMDB_FILE), IMDB_SHA256, size=IMDB_SIZE, progress=progress)


def find_imdb():
    """The cached IMDB archive or extracted folder, or DataError saying how to get it."""
    folder = data_dir()
    for name in (IMDB_FILE, "aclImdb"):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    raise DataError(f"IMDB not found in {folder}: run `gruengine data download imdb`, "
                    f"or pass the path of aclImdb_v1.tar.gz / the aclImdb folder (--data PATH)")
