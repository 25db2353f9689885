"""Typed per-application storage for plugins (like pytest's StashKey): no module globals, no ad-hoc attributes."""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class StashKey(Generic[T]):
    """A key for one kind of value; create one per module: ``SESSION = StashKey[ClientSession]()``."""

    __slots__ = ()


class Stash:
    def __init__(self) -> None:
        self._data: dict[StashKey[Any], Any] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return self._data[key]

    def get(self, key: StashKey[T], default: T | None = None) -> T | None:
        return self._data.get(key, default)

    def setdefault(self, key: StashKey[T], factory: Callable[[], T]) -> T:
        if key not in self._data:
            self._data[key] = factory()
        return self._data[key]

    def pop(self, key: StashKey[T], default: T | None = None) -> T | None:
        return self._data.pop(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data
