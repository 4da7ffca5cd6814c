"""Writing outputs as a set, and never touching a file vlmsam did not write.

Every output directory holds a manifest, ``.vlmsam-written.json``: the names of the files vlmsam
wrote there. :func:`write_set` refuses to replace an existing file that is not in it (a user's own
``photo.json`` in the folder named as ``--out``), and deletes earlier outputs only where the
manifest lists them. A set of files (one image's masks, overlay and json) is written whole or not
at all: every file goes to a temporary first, then the manifest, then the renames, the last file
(the json) last. Any ``OSError`` on the way (disk full, read-only, no permission, a file-size
limit) removes the temporaries and is one :class:`~vlmsam.errors.VlmsamError` line.

A directory lock (``flock`` on the directory itself) keeps two processes writing into one
``--out`` from losing each other's manifest entries.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from vlmsam.errors import VlmsamError

MANIFEST = ".vlmsam-written.json"
TEMP_PREFIX = ".vlmsam-set-"  # temporaries of write_set; one left by a killed run is an orphan
Data = bytes | Callable[[], bytes]  # bytes, or a function that encodes them when their turn comes

_WHY = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (over a file-size limit)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "files cannot be created there",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EISDIR: "a directory is in the way",
    errno.ENOTDIR: "not a directory",
}
#: OSErrors that a user fixes (space, permissions, limits), not bugs: the CLI reports them in one line.
USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def os_error_text(exc: OSError) -> str:
    """A few words for an ``OSError`` ("no space left on device")."""
    return _WHY.get(exc.errno, exc.strerror or type(exc).__name__)


def not_ours(path: Path) -> VlmsamError:
    return VlmsamError(f"{path}: exists and was not written by vlmsam; pick another --out "
                       "(vlmsam never overwrites or deletes files it did not write)")


def read_manifest(out_dir: Path) -> set[str]:
    """The names vlmsam wrote in ``out_dir`` (empty when it has no manifest)."""
    from vlmsam.io.files import read_json

    path = Path(out_dir) / MANIFEST
    if not os.path.lexists(path):
        return set()
    data = read_json(path, "vlmsam's list of the files it wrote here", dict)
    names = data.get("written")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise VlmsamError(f"{path}: not vlmsam's list of the files it wrote; pick another --out")
    return set(names)


def check_ours(out_dir: Path, names: Sequence[str], manifest: set[str] | None = None) -> None:
    """Refuse (one line) when a file of ``names`` exists in ``out_dir`` and vlmsam did not write it."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir) if manifest is None else manifest
    for name in names:
        if name == MANIFEST or "/" in name or name in ("", ".", ".."):
            raise VlmsamError(f"{out_dir / name}: vlmsam cannot write an output of this name")
        if os.path.lexists(out_dir / name) and name not in manifest:
            raise not_ours(out_dir / name)


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the directory ``out_dir`` (released on exit)."""
    import fcntl

    fd = os.open(out_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        with contextlib.suppress(OSError):  # a file system without locks: write unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_temp(out_dir: Path, data: bytes) -> str:
    from vlmsam.io.writer import write_temp

    return write_temp(out_dir, data, TEMP_PREFIX)


def _write_manifest(out_dir: Path, names: set[str]) -> None:
    tmp = _write_temp(out_dir, (json.dumps({"written": sorted(names)}, indent=0) + "\n").encode("utf-8"))
    try:
        os.replace(tmp, out_dir / MANIFEST)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_dir(out_dir: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_set(out_dir: str | os.PathLike, files: Sequence[tuple[str, Data]], *, stale: Callable[[str], bool] | None = None,
              unit: str = "this image") -> list[Path]:
    """Write ``files`` (``(name, bytes or a function giving them)``, the last one renamed last) into
    ``out_dir`` as one set; then delete the earlier outputs ``stale(name)`` picks from the manifest.
    Returns the written paths. Errors are one-line :class:`VlmsamError`\\ s that say nothing was
    written (of ``unit``) when that is so."""
    from vlmsam.io.writer import prepare_out_dir

    out = prepare_out_dir(out_dir)
    names = [name for name, _ in files]
    temps: list[str] = []
    renamed, current, listed = 0, out / (names[-1] if names else MANIFEST), None
    try:
        with locked(out):
            manifest = read_manifest(out)
            check_ours(out, names, manifest)
            for name, data in files:
                current = out / name
                temps.append(_write_temp(out, data() if callable(data) else data))
            current = out / MANIFEST
            listed = os.path.lexists(out / MANIFEST)
            _write_manifest(out, manifest | set(names))
            for tmp, name in zip(temps, names):
                current = out / name
                os.replace(tmp, current)
                renamed += 1
            gone = {n for n in manifest if stale is not None and n not in names and stale(n)}
            for name in sorted(gone):
                current = out / name
                (out / name).unlink(missing_ok=True)
            if gone:
                _write_manifest(out, (manifest | set(names)) - gone)
            _fsync_dir(out)
    except BaseException as exc:
        for tmp in temps[renamed:]:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if listed is not None and not renamed:  # the manifest was (perhaps) updated, but nothing was renamed
            with contextlib.suppress(OSError):
                _write_manifest(out, manifest) if listed else os.unlink(out / MANIFEST)
        if not isinstance(exc, OSError):
            raise
        done = f"nothing was written for {unit}" if not renamed else f"the outputs for {unit} are incomplete"
        raise VlmsamError(f"{current}: {os_error_text(exc)}; {done}") from None
    return [out / name for name in names]


def remove_orphans(out_dir: Path) -> int:
    """Delete temporaries that a killed run left in ``out_dir`` (under the lock, so none in use); their count."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return 0
    count = 0
    with locked(out_dir):
        for path in out_dir.glob(f"{TEMP_PREFIX}*.tmp"):
            with contextlib.suppress(OSError):
                path.unlink()
                count += 1
    return count
