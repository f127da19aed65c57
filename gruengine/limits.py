"""Bounds on what a reader may read and what a run may allocate, checked before the memory is
taken, so a hostile or mistaken input ends in a one-line error instead of a swap storm.

    max_text_bytes   one review, text line or series line (default 16 MiB)
    max_data_bytes   the arrays of one dataset, and the text and token ids read to build them
                     (default 4 GiB)

Both are keyword arguments of the data loaders and options of ``gruengine train`` and
``gruengine data info`` (``--max-text-bytes``, ``--max-data-bytes``).
"""
import os

from .errors import DataError

MAX_TEXT_BYTES = 16 << 20
MAX_DATA_BYTES = 4 << 30
# ids of a token dataset: int64, one per token
TOKEN_BYTES = 8


def fmt_bytes(n):
    """``n`` bytes for people, three significant digits: '512 B', '16 MiB', '3.64 TiB'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    x, k = float(n), 0
    while x >= 1024 and k < len(units) - 1:
        x /= 1024
        k += 1
    return f"{int(x)} B" if k == 0 else f"{x:.3g} {units[k]}"


def physical_memory():
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_limit(name, value):
    """A limit must be a positive integer (``name`` is the keyword argument)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an integer number of bytes >= 1, got {value!r}")
    return value


def check_text_size(where, nbytes, limit, what="text"):
    """DataError when one record (review, line, series) is larger than ``max_text_bytes``."""
    if nbytes > limit:
        raise DataError(f"{where}: {what} of {fmt_bytes(nbytes)} is over the limit of "
                        f"{fmt_bytes(limit)} per text (max_text_bytes; raise it with "
                        f"--max-text-bytes)")


def check_data_size(where, nbytes, limit, what, hint="raise it with --max-data-bytes"):
    """DataError when an array (or a running total) would pass ``max_data_bytes``."""
    if nbytes > limit:
        raise DataError(f"{where}: {what} would take {fmt_bytes(nbytes)}, over the limit of "
                        f"{fmt_bytes(limit)} per dataset (max_data_bytes; {hint})")


def check_line(where, line, limit, what="a line"):
    """``check_text_size`` for a decoded line, measured in UTF-8 bytes."""
    if len(line) * 4 > limit:       # cheap first: UTF-8 takes at most 4 bytes a character
        check_text_size(where, len(line.encode("utf-8", "surrogatepass")), limit, what)


def check_file_size(path, limit):
    """A file read whole into memory must fit ``max_data_bytes``; returns its size."""
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    check_data_size(path, size, limit, "reading the file")
    return size


class Budget:
    """A running total of bytes read for one dataset, checked against ``max_data_bytes`` as it
    grows (so a reader stops at the first record past the limit, not after reading them all)."""

    def __init__(self, limit, where):
        self.limit = check_limit("max_data_bytes", limit)
        self.where = where
        self.used = 0

    def take(self, nbytes, what="text"):
        self.used += int(nbytes)
        if self.used > self.limit:
            raise DataError(f"{self.where}: more than {fmt_bytes(self.limit)} of {what} to "
                            f"read, the limit per dataset (max_data_bytes; raise it with "
                            f"--max-data-bytes)")


def check_fits_memory(name, nbytes, what, hint):
    """ValueError naming ``name`` when ``nbytes`` is more than this machine's RAM: an
    allocation that large either fails or swaps the machine to a halt."""
    ram = physical_memory()
    if ram is not None and nbytes > ram:
        raise ValueError(f"{name}: {what} needs about {fmt_bytes(nbytes)}, more than the "
                         f"{fmt_bytes(ram)} of memory of this machine; {hint}")
