"""`gruengine data download` and `gruengine data info`: output, help, one-line errors with exit 2."""
import hashlib
import http.server
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from gruengine_cli.main import main
from gruengine.data import download as dl
from gruengine.data import load_dataset
from tests.fixtures.data_builders import imdb_reviews, write_imdb_tar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("argv", [["data", "--help"], ["data", "download", "--help"], ["data", "info", "--help"]])
def test_help_has_examples(argv, capsys):
    code, out, _ = run(argv, capsys)
    assert code == 0 and "Example" in out and "gruengine data" in out


def test_info_synthetic(capsys):
    code, out, err = run(["data", "info", "copy", "--n-train", "40", "--n-test", "10", "--seq-len", "7",
                          "--seed", "3"], capsys)
    assert code == 0, err
    tr = load_dataset("copy", n_train=40, n_test=10, seq_len=7, seed=3)["train"]
    counts = np.bincount(tr.targets.ravel(), minlength=tr.num_classes)
    assert f"train: 40 rows, task tag, T={tr.steps}" in out and "test: 10 rows" in out
    assert f"<blank>: {counts[0]}" in out and f"vocabulary: {len(tr.vocab)} tokens" in out


def test_info_imdb_archive(tmp_path, capsys):
    path = write_imdb_tar(str(tmp_path / "a.tar.gz"), imdb_reviews(np.random.default_rng(3), 6))
    code, out, err = run(["data", "info", path, "--max-len", "9", "--vocab-size", "10"], capsys)
    assert code == 0, err
    s = load_dataset("imdb", path, max_len=9, vocab_size=10)
    assert "dataset: imdb" in out and "classes (2): neg: 6, pos: 6" in out
    lengths = s["train"].lengths
    assert f"min {lengths.min()}, mean {lengths.mean():.1f}" in out and "vocabulary: 10 tokens" in out


def test_info_text_pair_with_task(tmp_path, capsys):
    (tmp_path / "a.dat").write_text("x\tone two three\ny\tfour\nx\tfive six\n", encoding="utf-8")
    (tmp_path / "b.dat").write_text("y\tone\n", encoding="utf-8")
    code, out, err = run(["data", "info", f"{tmp_path / 'a.dat'},{tmp_path / 'b.dat'}", "--task", "text"], capsys)
    assert code == 0, err
    assert "train: 3 rows, task classify, T=3" in out and "classes (2): x: 2, y: 1" in out
    assert "lengths: min 1, mean 2.0, median 2, max 3" in out


@pytest.mark.parametrize("argv,match", [
    (["data", "info", "{tmp}/nothing.npz"], "nothing.npz: no such file"),
    (["data", "info", "{tmp}/train.tsv,{tmp}/test.tsv"], "train.tsv:2: malformed line"),
    (["data", "info", "{tmp}/mystery.bin"], "cannot tell the dataset kind; pass --task"),
])
def test_info_errors_are_one_line(tmp_path, capsys, argv, match):
    (tmp_path / "train.tsv").write_text("a\tfine\nbroken line\n", encoding="utf-8")
    (tmp_path / "test.tsv").write_text("a\tfine\n", encoding="utf-8")
    code, out, err = run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and match in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_option_is_a_usage_error(capsys):
    code, _, err = run(["data", "info", "adding", "--task", "nope"], capsys)
    assert code == 2 and "Invalid value for '--task'" in err


def test_download_command(monkeypatch, tmp_path, capsys):
    payload = np.random.default_rng(1).bytes(50_000)

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        monkeypatch.setattr(dl, "IMDB_URL", f"http://127.0.0.1:{srv.server_address[1]}/x.tar.gz")
        monkeypatch.setattr(dl, "IMDB_SIZE", len(payload))
        monkeypatch.setattr(dl, "IMDB_SHA256", hashlib.sha256(payload).hexdigest())
        code, out, err = run(["data", "download", "imdb", "--dest", str(tmp_path), "--quiet"], capsys)
        assert code == 0, err
        assert out.strip() == str(tmp_path / "aclImdb_v1.tar.gz")
        assert open(out.strip(), "rb").read() == payload
        monkeypatch.setattr(dl, "IMDB_SHA256", hashlib.sha256(b"other").hexdigest())
        code, out, err = run(["data", "download", "imdb", "--dest", str(tmp_path / "b"), "--quiet"], capsys)
        assert code == 2 and "SHA-256 mismatch" in err and err.count("\n") == 1
        assert not os.listdir(tmp_path / "b")
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_subprocess_exit_status(tmp_path):
    r = subprocess.run([sys.executable, "-c", "from gruengine_cli.main import main; main()", "data", "info",
                        str(tmp_path / "missing.npz")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and "missing.npz" in r.stderr and r.stderr.count("\n") == 1


def test_failed_download_says_where_to_put_a_copy(monkeypatch, tmp_path, capsys):
    class Gone(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(404)
            self.end_headers()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gone)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        monkeypatch.setattr(dl, "IMDB_URL", f"http://127.0.0.1:{srv.server_address[1]}/x.tar.gz")
        code, out, err = run(["data", "download", "imdb", "--dest", str(tmp_path), "--quiet"], capsys)
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "HTTP error 404" in err
    assert f"or copy aclImdb_v1.tar.gz (from {dl.IMDB_URL}) into {tmp_path}" in err
    assert "--data PATH" in err


def test_info_reports_the_detected_text_columns(tmp_path, capsys):
    rows = [("a fine film indeed", "pos"), ("dull and long", "neg")] * 10
    (tmp_path / "r.tsv").write_text("review\tsentiment\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    code, out, err = run(["data", "info", str(tmp_path / "r.tsv"), "--seed", "3"], capsys)
    assert code == 0, err
    assert "test split: 0.2 of the file (seed 3)" in out
    assert (f"columns of {tmp_path / 'r.tsv'}: label = last field ('sentiment'), "
            "tab-separated, header row ['review', 'sentiment'] skipped") in out
    assert "train: 16 rows" in out and "test: 4 rows" in out and "classes (2): neg: 2, pos: 2" in out
