"""Small shared helpers: atomic file writes, output and seed checks, hashing, seeding, device selection."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import secrets
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from mpqbench.errors import UserError

if TYPE_CHECKING:
    import torch

SEED_MAX = 2**32 - 1  # numpy's seed range; every --seed must lie in [0, SEED_MAX]
# A temp file of a write that is not running any more (killed writer) is removed by the next write of the
# same target: at once when its writer's process (on this host) is gone, after STALE_TMP_S otherwise.
STALE_TMP_S = 3600.0
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]*)-(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


# ---- checks before any work ----------------------------------------------------------------------------------
def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path``'s parents (or ``path``) that exists in any form (a link counts)."""
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def _check_dir_writable(folder: Path, target: Path, what: str) -> None:
    """``folder`` (an existing directory, or where the missing folders of ``target`` start) accepts new files."""
    anc = _existing_ancestor(folder)
    if not anc.is_dir():
        raise UserError(f"{what} {target} cannot be created: {anc} is a file, not a folder; pass a path in a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{what} {target} cannot be written: folder {anc} is read-only for this user; "
                        "pass a path in a writable folder")


def check_writable(path: str | os.PathLike, what: str = "--out") -> Path:
    """Fail early (:class:`UserError`) unless a file can be written at ``path`` by :func:`atomic_path`.

    The target must not be a folder, and its folder must exist as a writable folder or be creatable (its
    nearest existing parent a writable folder). Nothing is created. Returns ``path`` as a Path.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is an existing folder; pass the path of a file, not of a folder")
    if os.path.lexists(path) and not path.is_file():
        raise UserError(f"{what} {path} exists and is not a regular file; pass another path")
    _check_dir_writable(path.parent, path, what)
    return path


def check_writable_dir(path: str | os.PathLike, what: str = "--out-dir") -> Path:
    """Fail early (:class:`UserError`) unless ``path`` is, or can be created as, a writable folder."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; pass a folder path")
    _check_dir_writable(path, path, what)
    return path


def check_seed(seed: int, what: str = "--seed") -> int:
    """``seed`` if it is an integer in [0, 2**32-1] (numpy's range), else a :class:`UserError`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise UserError(f"{what} {seed} is out of range; pass an integer in [0, {SEED_MAX}]")
    return seed


# ---- hashing -------------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of ``obj``: sorted keys, no spaces, ASCII (NaN/inf as Python's json writes them)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def json_sha256(obj: Any) -> str:
    """sha256 (hex) of :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


# ---- atomic writes -------------------------------------------------------------------------------------------
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32]


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: str | os.PathLike, *, max_age_s: float = STALE_TMP_S) -> list[Path]:
    """Delete the temp files that killed writes of ``path`` left beside it; return what was removed.

    A temp of :func:`atomic_path` is ``.<name>.<host>-<pid>.<random>.tmp``: it is stale when its writer
    (same host) is no longer running, or when it has not changed for ``max_age_s`` (a writer on another
    host, or a temp of an older mpqbench, ``.<name>.<random>.tmp``). Live writes of other processes are
    left alone.
    """
    path = Path(path)
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    prefix, host, now = f".{path.name}.", _host(), time.time()
    for tmp in entries:
        name = tmp.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        m = _TMP_RE.match(name)
        if m is not None and m["name"] != path.name:
            continue  # the temp of another file whose name starts like this one
        try:
            st = tmp.lstat()
        except OSError:
            continue
        if not os.path.isfile(tmp) or os.path.islink(tmp):
            continue
        dead = m is not None and m["host"] == host and not _pid_alive(int(m["pid"]))
        if dead or now - st.st_mtime > max_age_s:
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk (a file system that cannot fsync is let be)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Best effort: make a rename in ``folder`` durable (not every OS/file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and rename it onto ``path``, on failure delete it.

    Readers never see a half-written file, and a failed command leaves nothing behind. The file gets the
    mode the umask gives (like ``open(path, "w")``); temps that killed writes of the same target left
    behind are removed first (:func:`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    while True:
        tmp_path = path.with_name(f".{path.name}.{_host()}-{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask
        except FileExistsError:
            continue
        os.close(fd)
        break
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.lexists(tmp_path):
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (checkpoints survive a kill mid-write)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def available_devices() -> list[str]:
    """The devices this machine offers: ``cpu``, ``cuda:0`` ... ``cuda:N-1``, ``mps`` when present."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; any other name must be a device this machine has.

    A device that is unknown (``tpu9``), absent (``cuda`` without CUDA) or beyond the device count
    (``cuda:7`` on a one-GPU machine) is a :class:`UserError` that names the available devices.
    """
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    choose = f"pass --device auto or one of: {', '.join(available_devices())}"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"unknown device {name!r}; {choose}") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise UserError(f"device {name!r} does not exist; {choose}")
    elif device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} needs CUDA, which this machine does not have; {choose}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"device {name!r} does not exist ({count} CUDA device{'s' if count != 1 else ''}); {choose}")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise UserError(f"device {name!r} is not available on this machine; {choose}")
    else:
        raise UserError(f"device {name!r} is not supported; {choose}")
    return device


def device_name(device: torch.device) -> str:
    """A human-readable device name for records (GPU model or CPU model)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return "cpu: " + line.split(":", 1)[1].strip()
        except OSError:
            pass
        import platform

        return "cpu: " + (platform.processor() or platform.machine())
    return device.type
