"""The progress display: one line that fits the terminal on a TTY, plain lines in a log."""
import io
import re

import pytest

from gruengine.progress import Progress, format_seconds, format_stats

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_terminal_bar_never_wraps_and_shows_time_left(monkeypatch, columns, rng):
    monkeypatch.setenv("COLUMNS", str(columns))
    out = Tty()
    total = int(rng.integers(5, 40))
    bar = Progress(total, desc="epoch 12/100", stream=out)
    for _ in range(total):
        bar.update(1, loss=float(rng.random()), acc=float(rng.random()), lr=1e-3,
                   tok_s=float(rng.uniform(1e3, 1e6)))
    bar.close()
    frames = [_ANSI.sub("", f) for f in out.getvalue().replace("\n", "\r").split("\r") if f]
    assert frames and all(len(f) <= columns - 1 for f in frames), max(map(len, frames))
    assert any(" left" in f for f in frames) or total == 1
    assert frames[-1].startswith("epoch 12/100 [" + "#" * 20 + f"] {total}/{total}")
    assert out.getvalue().endswith("\n")                 # the next line starts clean


def test_log_gets_plain_lines_without_carriage_returns():
    out = io.StringIO()
    bar = Progress(10, desc="epoch 1/2", stream=out, announce=True, log_every=0.0)
    bar.n = 2                                            # a resumed epoch
    for _ in range(8):
        bar.update(1, loss=0.5, tok_s=1234.0)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "epoch 1/2: 10 batches"
    assert lines[1].startswith("epoch 1/2: 3/10  loss 0.5  1,234 tok/s  ") and lines[1].endswith(" left")
    assert len(lines) == 8                               # none at the last step: the epoch line follows
    quiet = io.StringIO()
    bar = Progress(10, desc="test", stream=quiet, enabled=False)
    bar.update(3, loss=1.0)
    bar.close()
    assert quiet.getvalue() == "" and bar.n == 3


def test_formatting():
    assert format_stats({"loss": 0.123456, "acc": None, "tok_s": 52000.4, "step": 3}) == \
        "loss 0.1235  52,000 tok/s  step 3"
    assert [format_seconds(s) for s in (0, 59.6, 61, 3600 + 62)] == ["00:00", "01:00", "01:01", "1:01:02"]
