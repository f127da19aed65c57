"""Atomic file writes: checkpoints, the run folder's config and metrics, exported models."""
import os
import tempfile


def write_atomic(path, data, what=None):
    """Write ``data`` (bytes, or a function that writes into the open binary file) to ``path``
    through a temporary ``.<name>.*.tmp`` in the same folder, fsync it, then ``os.replace``:
    readers and a crash see the old file or the new one, never a partial one.

    A write that fails for want of space names ``path`` and ``what`` was written; the
    previous file is unchanged and the temporary file is removed. Returns ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes 0600; the result is a normal file
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename is None:
            # the write itself names no file; the user needs to know which one failed
            raise OSError(e.errno, f"{e.strerror or e} (writing {what or os.path.basename(path)}; "
                                   f"the previous one is unchanged)", path) from None
        raise
    _fsync_dir(folder)
    return path


def _umask():
    old = os.umask(0o022)
    os.umask(old)
    return old


def _fsync_dir(folder):
    # the rename itself reaches the disk only with the folder's entry
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
