"""Progress of long loops on stderr: click's progress bar on a terminal, plain lines in a log.

    bar = Progress(total=n_batches, desc="epoch 1/3")
    bar.update(1, loss=0.41, acc=0.83, tok_s=52000)
    bar.close()

On a terminal: one line, redrawn in place, with an ETA and the latest statistics, cut to
the terminal's width so that it never wraps. When the stream is not a terminal (a redirected
log, a pipe): no redraws; ``announce=True`` writes one line when the loop starts, and every
``log_every`` seconds a plain line with the position, the statistics and the time left.
``enabled=False`` makes every call a no-op.
"""
import shutil
import sys
import time

import click

BAR_WIDTH = 20


def format_stats(stats):
    """'loss 0.41  acc 0.83  52,000 tok/s' from keyword statistics (None values left out)."""
    parts = []
    for k, v in stats.items():
        if v is None:
            continue
        if k == "tok_s":
            parts.append(f"{v:,.0f} tok/s")
        elif isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        else:
            parts.append(f"{k} {v}")
    return "  ".join(parts)


def format_seconds(s):
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, total, desc="", enabled=True, stream=None, announce=False, log_every=30.0):
        self.total, self.desc, self.enabled = max(int(total), 0), desc, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.stats = {}
        self.log_every = log_every
        self._start_n = 0
        self._n = 0
        self._t0 = self._last_log = time.monotonic()
        self._bar = None
        if not enabled:
            return
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if self._tty:
            self._bar = click.progressbar(length=max(self.total, 1), label=desc, file=self.stream,
                                          width=BAR_WIDTH, bar_template="%(label)s [%(bar)s] %(info)s",
                                          show_eta=False, show_percent=False, fill_char="#",
                                          empty_char="-", item_show_func=self._info)
            self._bar.__enter__()
        elif announce:
            self._write(f"{desc}: {self.total} batches")

    @property
    def n(self):
        return self._n

    @n.setter
    def n(self, value):
        # a resumed loop starts part-way: the time left counts only the steps run here
        self._n = self._start_n = int(value)
        if self._bar is not None:
            self._bar.pos = self._n

    def eta(self):
        """Seconds left at the pace of the steps run so far, or None before the first."""
        done = self._n - self._start_n
        if done <= 0:
            return None
        return (time.monotonic() - self._t0) / done * max(self.total - self._n, 0)

    def update(self, n=1, **stats):
        self._n += n
        self.stats.update(stats)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every and self._n < self.total:
            self._last_log = now
            left = self.eta()
            self._write(f"{self.desc.strip()}: {self._n}/{self.total}  {format_stats(self.stats)}"
                        + (f"  {format_seconds(left)} left" if left is not None else ""))

    def _info(self, _item):
        # position, time left and statistics, cut so that the whole line fits the terminal
        left = self.eta()
        if self._n >= self.total:
            when = f"  {format_seconds(time.monotonic() - self._t0)}"
        else:
            when = f"  {format_seconds(left)} left" if left is not None else ""
        text = f"{self._n}/{self.total}{when}  {format_stats(self.stats)}"
        room = shutil.get_terminal_size((80, 24)).columns - 1 - len(self.desc) - BAR_WIDTH - 4
        return text if len(text) <= room else text[:max(room - 3, 0)] + "..."

    def _write(self, line):
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self._bar is not None:
            self._bar.render_progress()
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def format_value(v):
    """A number as the per-epoch lines print it: thousands grouped from 10,000, else 4
    significant digits."""
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)
