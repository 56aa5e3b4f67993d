"""Parsers of the on-disk dataset formats, with no torch datasets involved.

* :func:`read_idx` — IDX files (MNIST / Fashion-MNIST), gzipped or raw, as uint8 arrays.
* :func:`read_cifar_batch` — CIFAR python-version pickles, read with an unpickler that accepts plain
  containers and numpy arrays only.

Malformed files raise :class:`~mpqbench.errors.UserError` saying to delete the file and get it again.
"""

from __future__ import annotations

import gzip
import importlib
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from mpqbench.errors import UserError


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (``.gz`` or raw) of unsigned bytes with ``ndim`` dimensions, as a uint8 array.

    Header: two zero bytes, type code 0x08 (ubyte), ``ndim``, then ``ndim`` big-endian uint32 sizes.
    """

    def bad(reason: str) -> UserError:
        return UserError(f"{path} is not a valid IDX file ({reason}); delete it and get it again")

    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise bad(f"cannot decompress: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise bad("bad magic number")
    if raw[2] != 0x08:
        raise bad(f"element type 0x{raw[2]:02x}, expected 0x08 (unsigned byte)")
    if raw[3] != ndim:
        raise bad(f"{raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise bad("truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise bad(f"{len(raw)} bytes for shape {dims}, expected {expected}; truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (a CIFAR batch needs nothing else)."""

    NUMPY_NAMES = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "numpy" and name in self.NUMPY_NAMES:
            if hasattr(np, "_core"):  # numpy >= 2 moved numpy.core to numpy._core
                module = module.replace("numpy.core", "numpy._core")
            return getattr(importlib.import_module(module), name)
        if (module, name) == ("_codecs", "encode"):  # how Python 3 pickles bytes at protocol 2
            import _codecs

            return _codecs.encode
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def read_cifar_batch(path: Path) -> dict[str, Any]:
    """A CIFAR python-version pickle (data batch or ``batches.meta``) with its keys as ``str``."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise UserError(f"{path} is not a CIFAR python pickle ({e}); delete it and get it again") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a CIFAR dict; delete it and get it again")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
