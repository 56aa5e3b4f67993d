"""Explicit name → factory registries (archs, datasets, methods), torchvision style.

Registering a name twice raises; looking up an unknown name raises :class:`UserError` listing what exists.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Generic, TypeVar

from mpqbench.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise UserError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries
