"""Atomic file writes shared by the exporters (checkpoint.py has its own for .npz)."""
import os
import tempfile


def write_atomic(path, data):
    """Write ``data`` (bytes) to ``path`` through a temporary file in the same folder and
    ``os.replace``: readers see the old file or the new one, never a partial one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        old = os.umask(0o022)
        os.umask(old)
        os.chmod(tmp, 0o666 & ~old)          # mkstemp makes 0600; the result is a normal file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
