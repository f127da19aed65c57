"""Stopping a run on SIGINT / SIGTERM without ever saving a state whose parts disagree.

The first signal asks the loop to stop after the current step; the loop saves a resumable
checkpoint and raises ``Interrupted``. A second signal stops at once, except inside a critical
section (an optimizer update together with the progress counters that count it, a
checkpoint save, the bookkeeping at the end of an epoch): there it takes effect the moment
the section ends. So no sequence of signals can leave the weights one update ahead of the
counters saved with them, and a double Ctrl-C still stops within one update or one save.
"""
import signal
import threading
from contextlib import contextmanager

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum):
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class StopRequests:
    """The signals a run has received, and its critical sections. ``say`` prints a notice."""

    def __init__(self, say):
        self.say = say
        self.count = 0            # signals received
        self.signum = None        # the first one's number
        self.depth = 0            # nesting of critical sections now running
        self.pending = False      # a second signal arrived inside a critical section
        self.stopping = False     # a stop is under way (its save next): later signals are ignored
        self.raised = False       # the handler raised Interrupted (outside a critical section)
        self._old = None

    @property
    def requested(self):
        return self.count > 0

    def install(self):
        """Handle SIGINT and SIGTERM (main thread only; elsewhere Python cannot)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        old = {}
        try:
            for sig in SIGNALS:
                old[sig] = signal.signal(sig, self._handler)
        except ValueError:
            self._old = old
            self.restore()
            return self
        self._old = old
        return self

    def restore(self):
        for sig, handler in (self._old or {}).items():
            signal.signal(sig, handler)
        self._old = None

    def _handler(self, signum, frame):
        self.count += 1
        name = signal_name(signum)
        if self.count == 1:
            self.signum = signum
            self._notice(f"\n{name}: stopping after this step (again to stop at once)")
            return
        if self.stopping:
            return
        if self.depth:
            if not self.pending:
                self._notice(f"\n{name} again: stopping as soon as the update or save under "
                             f"way is complete, then saving")
            self.pending = True
            return
        self.raised = self.stopping = True
        raise Interrupted(self.signum)

    def caused(self, e):
        """Whether exception ``e`` is a stop: Interrupted itself, or what C code (a Numba
        dispatcher, say) turned it into when the handler raised inside a call it made."""
        return isinstance(e, KeyboardInterrupt) or (self.raised and isinstance(e, Exception))

    def _notice(self, msg):
        try:
            self.say(msg)
        except (RuntimeError, OSError, ValueError):
            pass    # the signal interrupted a write to the same stream (reentrant call)

    @contextmanager
    def critical(self):
        """A section a second signal does not cut: it raises when the section is over."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.depth == 0 and self.pending and not self.stopping:
            self.stopping = True
            raise Interrupted(self.signum)

    def check(self):
        """Between steps: raise ``Interrupted`` when a stop was asked for."""
        if self.count:
            self.stopping = True      # from here on a signal must not cut the final save
            raise Interrupted(self.signum)
