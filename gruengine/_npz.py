"""Reading ``.npz`` archives without trusting them.

``np.load`` decompresses a member as soon as it is asked for, and allocates whatever shape the
member's header claims. ``NpzReader`` first reads every member's ``.npy`` header (a few hundred
bytes each, however large the member), so a caller can check names, shapes, dtypes and sizes
against what it expects, and only then reads the data it accepted, straight into an array of
the declared size. Pickled (object) members are never read.
"""
import math
import zipfile

import numpy as np
from numpy.lib import format as npformat

from .limits import fmt_bytes

_CHUNK = 1 << 20
_MAX_HEADER = 10000     # numpy's own bound on a .npy header
# zip errors a damaged archive raises (RuntimeError: encrypted; NotImplementedError: an
# unsupported compression method)
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
              RuntimeError, NotImplementedError, KeyError)


class Member:
    """One ``<key>.npy`` member: its header, and where its data starts."""

    def __init__(self, key, info, shape, dtype, fortran, offset):
        self.key, self.info, self.shape, self.dtype = key, info, shape, dtype
        self.fortran, self.offset = fortran, offset

    @property
    def nbytes(self):
        return math.prod(self.shape) * self.dtype.itemsize


class NpzReader:
    """The members of the ``.npz`` at ``path``, headers read, data not yet.

    ``error``: the exception class to raise; every message starts with ``where``.
    ``unreadable``: the words for a damaged archive ('unreadable (truncated or corrupt)').
    ``stored_only``: refuse compressed members, so no member can expand beyond the file.
    """

    def __init__(self, path, *, error, where, unreadable, stored_only=False):
        self.error, self.where, self.unreadable = error, where, unreadable
        try:
            self.zip = zipfile.ZipFile(path)
        except ZIP_ERRORS as e:
            raise self._bad(e) from None
        try:
            self.members = self._read_headers(stored_only)
        except BaseException:
            self.zip.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.zip.close()

    def _bad(self, e):
        why = " ".join(str(e).split()) or type(e).__name__
        return self.error(f"{self.where}: {self.unreadable}: {why}")

    def _read_headers(self, stored_only):
        members = {}
        for info in self.zip.infolist():
            name = info.filename
            if not name.endswith(".npy"):
                raise self.error(f"{self.where}: member {name!r} is not an array (.npy) file")
            key = name[:-4]
            if key in members:
                raise self.error(f"{self.where}: array {key!r} appears twice in the archive")
            if stored_only and info.compress_type != zipfile.ZIP_STORED:
                raise self.error(f"{self.where}: array {key!r} is compressed; this kind of file "
                                 f"stores its arrays uncompressed")
            members[key] = self._header(key, info)
        return members

    def _header(self, key, info):
        try:
            with self.zip.open(info) as f:
                magic = f.read(len(npformat.MAGIC_PREFIX))
                if magic != npformat.MAGIC_PREFIX:
                    raise self.error(f"{self.where}: array {key!r} is not a NumPy array (no .npy "
                                     f"header: random or damaged bytes)")
                version = (f.read(1)[0], f.read(1)[0])
                shape, fortran, dtype = _read_header(f, version)
                offset = f.tell()
        except self.error:
            raise
        except ZIP_ERRORS + (IndexError, SyntaxError, TypeError) as e:
            if "allow_pickle" in str(e):
                raise self._pickled(key) from None
            raise self._bad(e) from None
        if dtype.hasobject:
            raise self._pickled(key)
        m = Member(key, info, shape, dtype, fortran, offset)
        held = info.file_size - offset
        if held != m.nbytes:
            raise self.error(f"{self.where}: array {key!r}: its header declares shape {shape} "
                             f"{dtype} ({fmt_bytes(m.nbytes)}), the archive holds {held} bytes "
                             f"for it")
        return m

    def _pickled(self, key):
        return self.error(f"{self.where}: array {key!r} holds pickled objects, which are never "
                          f"loaded (only plain arrays are allowed)")

    def read(self, key):
        """The array of member ``key``, read into an array of exactly its declared size."""
        m = self.members[key]
        shape = m.shape[::-1] if m.fortran else m.shape
        a = np.empty(shape, dtype=m.dtype)
        if m.nbytes:
            buf = memoryview(a.reshape(-1).view(np.uint8))
            try:
                with self.zip.open(m.info) as f:
                    f.seek(m.offset)
                    pos = 0
                    while pos < m.nbytes:
                        k = f.readinto(buf[pos:pos + _CHUNK])
                        if not k:
                            raise EOFError(f"array {key!r} ends after {pos} of {m.nbytes} bytes")
                        pos += k
                    f.read(1)                     # at the end: zipfile checks the CRC here
            except ZIP_ERRORS as e:
                raise self._bad(e) from None
        return a.T if m.fortran else a


def _read_header(f, version):
    if version == (1, 0):
        return npformat.read_array_header_1_0(f, max_header_size=_MAX_HEADER)
    if version == (2, 0):
        return npformat.read_array_header_2_0(f, max_header_size=_MAX_HEADER)
    raise ValueError(f".npy format version {version} is not supported")
