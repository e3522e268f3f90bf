"""One typed registry for methods and datasets.

Targets are lazy ``"module:attr"`` strings, imported on first :meth:`Registry.get`, so that
listing names or ``fewshot --help`` never imports torch. Three sources, in precedence order:

1. built-ins registered in code (``fewshot/methods/__init__.py``);
2. installed plugins, read lazily from an entry-point group (``fewshot.methods``); a plugin
   whose name clashes with a built-in is ignored with a warning naming its distribution;
   two plugins with one name are an error naming both distributions;
3. ad hoc files: ``path/to/file.py:ClassName`` (for prototyping a method).

A discovery failure of one plugin is reported for that plugin and does not disable the group.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Generic, TypeVar, cast

from fewshot.types import ConfigError

__all__ = ["Origin", "Registry", "load_file_target"]

T = TypeVar("T")


@dataclass(frozen=True)
class Origin:
    """Where a registered name comes from (recorded in every result)."""

    kind: str  # "builtin" | "plugin" | "file"
    target: str  # "module:attr", or "path.py:Class"
    distribution: str | None = None
    version: str | None = None


def _import_target(target: str) -> object:
    module_name, _, attr = target.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def load_file_target(spec: str) -> object:
    """Load ``path/to/file.py:Name`` from a Python file outside any package."""
    path_text, _, attr = spec.rpartition(":")
    path = Path(path_text).expanduser()
    if not path_text.endswith(".py") or not attr:
        raise ConfigError(f"Bad file target {spec!r}: write path/to/file.py:ClassName.")
    if not path.is_file():
        raise ConfigError(f"Method file {path} does not exist (from {spec!r}).")
    module_name = f"fewshot_user_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"Cannot import {path} as a Python module.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ConfigError(f"Importing {path} failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        names = [n for n in vars(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{path} defines no {attr!r}.{hint}")
    return getattr(module, attr)


def _distribution(ep: EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


class Registry(Generic[T]):
    """Name -> lazily imported object of type ``T`` (a class, usually)."""

    def __init__(self, kind: str, base: type | None = None, group: str | None = None) -> None:
        self.kind = kind  # "method", "dataset": used in messages
        self.base = base
        self.group = group  # entry-point group, or None
        self._targets: dict[str, str] = {}
        self._objects: dict[str, T] = {}
        self._origins: dict[str, Origin] = {}
        self._summaries: dict[str, dict[str, str]] = {}
        self._plugins_loaded = False

    # -- registration -------------------------------------------------------------------
    def register(self, name: str, target: str | T, **summary: str) -> None:
        """Register a built-in: a ``"module:attr"`` string (lazy) or the object itself.

        ``summary``: facts about it that listings show without importing it (a method's
        ``needs`` and ``novel``); a test keeps them equal to the object's own attributes.
        """
        self._summaries[name] = dict(summary)
        if name in self._origins:
            raise ConfigError(f"{self.kind} {name!r} is registered twice: {self._origins[name].target}.")
        if isinstance(target, str):
            self._targets[name] = target
            self._origins[name] = Origin("builtin", target)
        else:
            self._objects[name] = self._check(name, target)
            self._origins[name] = Origin("builtin", f"{getattr(target, '__module__', '?')}:{name}")

    def _load_plugins(self) -> None:
        if self._plugins_loaded or self.group is None:
            return
        self._plugins_loaded = True
        seen: dict[str, Origin] = {}
        for ep in entry_points(group=self.group):
            dist, version = _distribution(ep)
            origin = Origin("plugin", ep.value, dist, version)
            if ep.name in self._origins and self._origins[ep.name].kind == "builtin":
                warnings.warn(
                    f"Plugin {self.kind} {ep.name!r} from distribution {dist or '?'} clashes with the "
                    "built-in of that name and is ignored; rename it in the plugin's entry points.",
                    stacklevel=3,
                )
                continue
            if ep.name in seen:
                raise ConfigError(
                    f"Two plugins register {self.kind} {ep.name!r}: {seen[ep.name].distribution} "
                    f"({seen[ep.name].target}) and {dist} ({ep.value}). Uninstall one of them."
                )
            seen[ep.name] = origin
            self._targets[ep.name] = ep.value
            self._origins[ep.name] = origin

    # -- lookup -------------------------------------------------------------------------
    def summary(self, name: str) -> dict[str, str]:
        """What was declared with a built-in at registration (empty for plugins)."""
        return dict(self._summaries.get(name, {}))

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._origins)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._origins

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def origin(self, name: str) -> Origin:
        if name.endswith(".py") or ".py:" in name:
            return Origin("file", name)
        self._load_plugins()
        if name not in self._origins:
            raise ConfigError(self._unknown_message(name))
        return self._origins[name]

    def get(self, name: str) -> T:
        """Return the object for ``name`` (or a ``file.py:Attr`` target); import on first use."""
        if ".py:" in name:
            return self._check(name, load_file_target(name))
        self._load_plugins()
        if name in self._objects:
            return self._objects[name]
        if name not in self._targets:
            raise ConfigError(self._unknown_message(name))
        target = self._targets[name]
        try:
            obj = _import_target(target)
        except Exception as exc:
            origin = self._origins[name]
            where = f" (plugin distribution {origin.distribution})" if origin.kind == "plugin" else ""
            raise ConfigError(
                f"Cannot load {self.kind} {name!r} from {target}{where}: {type(exc).__name__}: {exc}"
            ) from exc
        self._objects[name] = self._check(name, obj)
        return self._objects[name]

    def _check(self, name: str, obj: object) -> T:
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise ConfigError(f"{self.kind} {name!r} is {obj!r}, not a subclass of {self.base.__name__}.")
        return cast(T, obj)

    def _unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return (
            f"Unknown {self.kind} {name!r}.{hint} Known: {', '.join(names)}. "
            f"`fewshot list {self.kind}s` lists them."
        )

    def _clear_plugins(self) -> None:
        """Forget discovered plugins (tests)."""
        for name, origin in list(self._origins.items()):
            if origin.kind == "plugin":
                self._origins.pop(name)
                self._targets.pop(name, None)
                self._objects.pop(name, None)
        self._plugins_loaded = False
