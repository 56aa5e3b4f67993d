"""Dataset registry: what each dataset is, where the data root is, and how a split is loaded by name.

Every dataset is a registered :class:`DatasetSource` that knows where its files live, how to get them,
and how to load a split. ``load_split(name, split, root=..., input_size=...)`` returns a
``torch.utils.data.Dataset`` of ``(image, label)`` with ``image`` a normalised float tensor
``[C, input_size, input_size]`` and ``label`` an ``int``. :func:`dataset_info` gives a dataset's
static facts without loading it; :func:`dataset_status` says which datasets are present where.

Nothing is downloaded unless ``download=True`` is passed; missing data raises
:class:`~mpqbench.errors.UserError` naming what is missing and the command that gets it. ``root=None``
means ``$MPQBENCH_DATA_ROOT`` or ``~/.cache/mpqbench/data``. The registered sources live in
:mod:`mpqbench.data.sources_memory` and :mod:`mpqbench.data.sources_files`; the torchvision download
helpers at the end of this module are shared by both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from torch.utils.data import Dataset

from mpqbench.errors import UserError
from mpqbench.registry import Registry

DATA_ROOT_ENV = "MPQBENCH_DATA_ROOT"

Split = Literal["train", "test"]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, known without loading it.

    ``native_size`` is the side (px) of the stored images for the in-memory sets and the conventional
    input size (224) for the file-backed sets, whose images vary in size.
    """

    name: str
    num_classes: int
    in_channels: int
    native_size: int


def default_data_root() -> Path:
    """``$MPQBENCH_DATA_ROOT`` if set, else ``~/.cache/mpqbench/data``."""
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env) if env else Path.home() / ".cache" / "mpqbench" / "data"


class DatasetSource:
    """One registered dataset: where its files may be, how to get them, how to load a split."""

    info: ClassVar[DatasetInfo]
    title: ClassVar[str]  # human name for messages

    def candidates(self, root: Path) -> list[Path]:
        """Places searched, in order."""
        raise NotImplementedError

    def complete(self, where: Path) -> bool:
        """Whether ``where`` holds every file this dataset needs."""
        raise NotImplementedError

    def how_to_get(self, root: Path) -> str:
        """The one command (or step) that puts the data where :meth:`candidates` looks."""
        raise NotImplementedError

    def download(self, root: Path) -> None:
        raise UserError(f"{self.title} cannot be downloaded automatically; {self.how_to_get(root)}")

    def load(self, split: Split, where: Path, input_size: int) -> Dataset:
        raise NotImplementedError

    def info_for(self, root: Path) -> DatasetInfo:
        return self.info

    def locate(self, root: Path) -> Path | None:
        return next((p for p in self.candidates(root) if self.complete(p)), None)

    def require(self, root: Path, download: bool) -> Path:
        """The data's location; downloads first only when ``download`` is set; else UserError."""
        where = self.locate(root)
        if where is None and download:
            self.download(root)
            where = self.locate(root)
        if where is None:
            searched = " or ".join(str(p) for p in self.candidates(root))
            raise UserError(f"{self.title} not found in {searched}; {self.how_to_get(root)}")
        return where


DATASETS: Registry[type[DatasetSource]] = Registry("dataset")


def register_dataset(name: str) -> Callable[[type[DatasetSource]], type[DatasetSource]]:
    return DATASETS.register(name)


def _source(name: str) -> DatasetSource:
    return DATASETS.get(name)()


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root).expanduser() if root is not None else default_data_root()


def load_split(
    name: str,
    split: Split,
    *,
    root: str | os.PathLike | None = None,
    input_size: int,
    download: bool = False,
) -> Dataset:
    """Split ``"train"`` or ``"test"`` of dataset ``name`` as ``(float [C, input_size, input_size], int)``."""
    source = _source(name)
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; choose train or test")
    if not isinstance(input_size, int) or input_size < 1:
        raise UserError(f"input size must be a positive integer, got {input_size!r}")
    base = _root(root)
    return source.load(split, source.require(base, download), input_size)


def dataset_info(name: str, root: str | os.PathLike | None = None) -> DatasetInfo:
    """Classes, channels and native size of ``name`` without loading it (ImageFolder counts its class dirs)."""
    return _source(name).info_for(_root(root))


def dataset_status(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """For ``mpqbench info``: one ``{name, present, where, how_to_get}`` per registered dataset."""
    base = _root(root)
    rows = []
    for name in DATASETS.names():
        source = _source(name)
        where = source.locate(base)
        rows.append(
            {
                "name": name,
                "present": where is not None,
                "where": str(where) if where is not None else None,
                "how_to_get": source.how_to_get(base),
            }
        )
    return rows


def _torchvision_command(cls: str, root: Path) -> str:
    return f"python -c \"import torchvision; torchvision.datasets.{cls}('{root}', download=True)\""


def _torchvision_download(cls: str, root: Path, title: str) -> None:
    import torchvision

    try:
        getattr(torchvision.datasets, cls)(str(root), download=True)
    except Exception as e:  # network, checksum, disk: all end the same way for the user
        raise UserError(
            f"downloading {title} into {root} failed ({type(e).__name__}: {e}); "
            "check the network or put the files there yourself"
        ) from None
