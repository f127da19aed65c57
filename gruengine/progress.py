"""A dependency-free progress bar for long loops, written to stderr.

    bar = Progress(total=n_batches, desc="epoch 1/3")
    bar.update(1, loss=0.41, acc=0.83, tok_s=52000)
    bar.close()

Redraws at most every ``min_interval`` seconds; ``enabled=False`` makes every call a no-op.
"""
import sys
import time


class Progress:
    def __init__(self, total, desc="", enabled=True, stream=None, width=24, min_interval=0.2):
        self.total, self.desc, self.enabled = max(int(total), 0), desc, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.width, self.min_interval = width, min_interval
        self.n, self.stats = 0, {}
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._drawn = False
        self._len = 0
        self._drawn_n = -1

    def update(self, n=1, **stats):
        self.n += n
        self.stats.update(stats)
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last >= self.min_interval or self.n >= self.total:
            self._last = now
            self._draw(now)

    def _draw(self, now):
        frac = self.n / self.total if self.total else 1.0
        full = int(round(self.width * min(frac, 1.0)))
        bar = "#" * full + "-" * (self.width - full)
        parts = [f"{self.desc} [{bar}] {self.n}/{self.total}", f"{now - self._t0:.0f}s"]
        for k, v in self.stats.items():
            if v is None:
                continue
            if k == "tok_s":
                parts.append(f"{v:,.0f} tok/s")
            elif isinstance(v, float):
                parts.append(f"{k} {v:.4g}")
            else:
                parts.append(f"{k} {v}")
        line = "  ".join(parts)
        pad = max(self._len - len(line), 0)
        self._len = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._drawn = True
        self._drawn_n = self.n

    def close(self):
        if self.enabled and self._drawn:
            if self._drawn_n != self.n:
                self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
