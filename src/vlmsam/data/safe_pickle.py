"""Reading untrusted pickles (the refer datasets' ``refs(unc).p``) without running their code.

A pickle can name any importable callable and have it called while loading; a downloaded
``refs(unc).p`` is therefore code. This unpickler resolves only the few globals that build plain
data (``set``, ``frozenset``, ``bytes``, ``bytearray``, and ``_codecs.encode``, which protocols 0-2 use
for bytes), so only builtin containers and scalars can come out.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from vlmsam.errors import VlmsamError


class UnsafePickleError(VlmsamError):
    pass


_ALLOWED = {
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytes"), ("builtins", "bytearray"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"), ("__builtin__", "bytearray"),  # Python 2 names
    ("_codecs", "encode"),
}


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"refusing to load {module}.{name}")


def load_pickle(path: str | Path):
    """Load a pickle of builtin containers only; anything else raises :class:`UnsafePickleError`."""
    from vlmsam.io.files import read_user_bytes

    try:  # regular files only, capped: a FIFO or a device named as the refs file does not hang us
        data = read_user_bytes(path, "a pickle of refs")
    except VlmsamError as exc:
        raise UnsafePickleError(str(exc)) from None
    try:
        # Python-2 pickles (the refer files were written by Python 2) hold str as bytes.
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as exc:
        raise UnsafePickleError(
            f"{path}: the pickle holds more than plain data ({exc}); it was not loaded. "
            "Use the refs file from the official refer release"
        ) from None
    except Exception as exc:
        raise UnsafePickleError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
