"""Reading untrusted pickles (the refer datasets' ``refs(unc).p``) without running their code.

A pickle can name any importable callable and have it called while loading; a downloaded
``refs(unc).p`` is therefore code. This unpickler resolves no global at all, so only builtin
containers and scalars (dict, list, tuple, set, str, bytes, int, float, bool, None) can be built.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from vlmsam.errors import VlmsamError


class UnsafePickleError(VlmsamError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_pickle(path: str | Path):
    """Load a pickle of builtin containers only; anything else raises :class:`UnsafePickleError`."""
    data = Path(path).read_bytes()
    try:
        # Python-2 pickles (the refer files were written by Python 2) hold str as bytes.
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(
            f"{path}: the pickle holds more than plain data ({exc}); it was not loaded. "
            "Use the refs file from the official refer release"
        ) from None
    except Exception as exc:
        raise UnsafePickleError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
