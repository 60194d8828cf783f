"""The method registry: every module in this package that defines a registered method.

A method is one file `methods/<name>.py` holding one class decorated with `@register`;
its registry name is the file name, which is also the `method:` value of a run in
params.yaml and the file DVC tracks for that run. Nothing else needs editing to add one.
"""
from __future__ import annotations

import importlib
import pkgutil

from methods.base import Batch, SegmentationMethod, TrainContext

__all__ = ["Batch", "SegmentationMethod", "TrainContext", "register", "get_method", "available_methods"]

_REGISTRY: dict[str, type[SegmentationMethod]] = {}
_NOT_METHODS = {"base"}


def register(cls: type[SegmentationMethod]) -> type[SegmentationMethod]:
    """Class decorator: registers `cls` under the name of the module that defines it."""
    if not (isinstance(cls, type) and issubclass(cls, SegmentationMethod)):
        raise TypeError(f"@register expects a SegmentationMethod subclass, got {cls!r}")
    name = cls.__module__.rsplit(".", 1)[-1]
    existing = _REGISTRY.get(name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"methods/{name}.py registers two methods ({existing.__qualname__}, {cls.__qualname__}); "
                         "keep one method per file.")
    cls.registry_name = name
    _REGISTRY[name] = cls
    return cls


def _module_names() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if info.name not in _NOT_METHODS
                  and not info.name.startswith("_"))


def available_methods() -> dict[str, type[SegmentationMethod]]:
    """Import every module of the package and return the registry (name -> class)."""
    for name in _module_names():
        importlib.import_module(f"methods.{name}")
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type[SegmentationMethod]:
    """The class registered by methods/<name>.py (only that module is imported)."""
    if name not in _REGISTRY:
        if name not in _module_names():
            raise KeyError(f"unknown method {name!r}: there is no methods/{name}.py. "
                           f"Available: {', '.join(_module_names())}.")
        importlib.import_module(f"methods.{name}")
    if name not in _REGISTRY:
        raise KeyError(f"methods/{name}.py defines no class decorated with @register.")
    return _REGISTRY[name]
