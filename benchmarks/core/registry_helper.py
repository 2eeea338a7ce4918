"""One registry helper for everything found by name: tasks, remedies and datasets.

A :class:`Registry` maps names to objects: ``register`` (a class-or-instance decorator; a class is
instantiated without arguments) refuses one name for two different classes, ``get`` names the known entries
when a name is unknown, and ``discover`` (given at construction) imports the modules that register, once,
before the first look-up. ``import_module_quietly`` is the discovery step shared by tasks and remedies.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


class Registry:
    """Named objects of one ``kind``. ``table`` (looked up at each call, so a test can swap the dict) holds
    them; ``discover`` imports the modules that register; an unknown name raises ``error`` listing ``plural``
    and ``hint()`` after it. Names list alphabetically (``sort=True``), in registration order (False), or by
    ``sort(item)`` (a key function). Registering a name again is an error unless ``same(old, new)``: by default
    both are of one class (registering a class twice is no error)."""

    def __init__(self, kind: str, *, table: Callable[[], dict[str, Any]] | None = None,
                 discover: Callable[[], None] | None = None, plural: str | None = None,
                 error: type[Exception] = KeyError, sort: bool | Callable[[Any], Any] = True,
                 hint: Callable[[], str] | None = None, same: Callable[[Any, Any], bool] | None = None):  # fmt: skip
        own: dict[str, Any] = {}
        self.kind, self.plural, self.error, self.sort = kind, plural or f"{kind}s", error, sort
        self._table = table or (lambda: own)
        self._discover, self._hint = discover, hint
        self._same = same or (lambda old, new: type(old) is type(new))
        self._discovered = False

    def discover(self, force: bool = False) -> None:
        if self._discover is not None and (force or not self._discovered):
            self._discovered = True  # before importing: a module that looks itself up must not recurse
            self._discover()

    def register(self, obj=None, *, name: str | None = None):
        """Decorator (``@register`` or ``@register(name=...)``) or call; returns what it was given."""

        def add(target):
            item = target() if isinstance(target, type) else target
            table = self._table()
            key = name or getattr(item, "name", "")
            if not key:
                raise ValueError(f"{self.kind} {target!r} has no name: set the class attribute `name`")
            if key in table and not self._same(table[key], item):
                raise ValueError(f"{self.kind} name {key!r} registered twice ({type(table[key]).__name__}, "
                                 f"{type(item).__name__})")  # fmt: skip
            table[key] = item
            return target

        return add(obj) if obj is not None else add

    def names(self) -> list[str]:
        self.discover()
        table = self._table()
        if callable(self.sort):
            return sorted(table, key=lambda name: (self.sort(table[name]), name))
        return sorted(table) if self.sort else list(table)

    def get(self, name: str):
        self.discover()
        table = self._table()
        if name not in table:
            hint = self._hint() if self._hint else ""
            raise self.error(f"unknown {self.kind} {name!r}; {self.plural}: {', '.join(self.names()) or 'none'}{hint}")
        return table[name]

    def view(self, value: Callable[[Any], Any] | None = None) -> Mapping[str, Any]:
        """A read-only mapping name -> ``value(item)`` (the item itself by default), in ``names()`` order,
        that discovers on first use (e.g. ``benchmarks.data.DATASETS``, name -> spec)."""
        return _View(self, value or (lambda item: item))


class _View(Mapping):
    def __init__(self, registry: Registry, value: Callable[[Any], Any]):
        self._registry, self._value = registry, value

    def __getitem__(self, name: str):
        self._registry.discover()
        return self._value(self._registry._table()[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.names())

    def __len__(self) -> int:
        return len(self._registry.names())

    def __repr__(self) -> str:
        return f"<{self._registry.kind} registry: {', '.join(self._registry.names())}>"


def import_module_quietly(module: str, errors: dict[str, str]) -> None:
    """Import ``module``; a module that does not exist is skipped, one that fails (an optional dependency
    missing) is remembered in ``errors`` with its error instead of taking the registry down."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module:
            return  # no such module: the package simply has none
        errors[module] = f"{type(err).__name__}: {err}"
    except Exception as err:
        errors[module] = f"{type(err).__name__}: {err}"


def modules_in(folder: str | Path, package: str, *, packages: bool, skip: Iterable[str] = (),
               leaves: Iterable[str] = ()) -> list[str]:  # fmt: skip
    """Dotted names of the modules (``packages=False``) or of ``package.<sub>.<leaf>`` for each sub-package
    (``packages=True``) in ``folder``, read from the file system (no import of the package itself)."""
    skip, leaves = set(skip), tuple(leaves)
    found = [info for info in pkgutil.iter_modules([str(folder)]) if info.ispkg == packages and info.name not in skip]
    if packages:
        return [f"{package}.{info.name}.{leaf}" for info in found for leaf in leaves]
    return [f"{package}.{info.name}" for info in found]


def import_discovered(modules: Iterable[str], entry_point_group: str, errors: dict[str, str]) -> None:
    """Discovery shared by every registry: import each of ``modules`` quietly, then the modules that installed
    packages declare in the entry-point group ``entry_point_group``."""
    for module in modules:
        import_module_quietly(module, errors)
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group=entry_point_group):
            import_module_quietly(ep.module, errors)
    except Exception as err:  # broken metadata of an unrelated package
        errors[entry_point_group] = f"{type(err).__name__}: {err}"


def failed_imports_hint(kind: str, errors: dict[str, str]) -> Callable[[], str]:
    """The ``hint`` of a registry whose discovery remembers failed imports in ``errors``: an unknown name's error
    then says which of its modules could not be imported, and why."""
    return lambda: f" ({kind} modules that failed to import: {dict(errors)})" if errors else ""
