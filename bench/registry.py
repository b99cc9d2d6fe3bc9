"""The registry idiom used everywhere in bench: a plain dict filled by a decorator (as in timm)."""

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def register(registry: dict[str, Callable], name: str) -> Callable[[F], F]:
    def add(fn: F) -> F:
        if name in registry:
            raise KeyError(f"'{name}' is registered twice")
        registry[name] = fn
        return fn

    return add
