"""Architecture names, `timm:<name>`, `tv:<name>`, `bench:<name>`: parsed, checked and listed across the
three registries. A module of its own because the head code needs split_arch and factory needs the head code."""

from __future__ import annotations

import fnmatch
from functools import cache

from bench.errors import did_you_mean
from bench.models.builtins import BUILTINS

PREFIXES = ("timm", "tv", "bench")


def split_arch(arch: str) -> tuple[str, str]:
    prefix, sep, name = arch.partition(":")
    if not sep or prefix not in PREFIXES:
        raise ValueError(f"'{arch}' needs a registry prefix: timm:<name>, tv:<name> or bench:<name>")
    return prefix, name


@cache
def _tv_names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _names(prefix: str) -> list[str]:
    if prefix == "bench":
        return list(BUILTINS)
    if prefix == "tv":
        return list(_tv_names())
    import timm

    return timm.list_models()


def check_arch(arch: str) -> None:
    """Raise ValueError for an unknown architecture (bench.suite.check_names reports it with the suite key)."""
    prefix, name = split_arch(arch)
    if prefix == "timm":
        import timm

        if timm.is_model(name):
            return
    elif name in _names(prefix):
        return
    raise ValueError(f"unknown architecture '{arch}'; {did_you_mean(name, _names(prefix))} (see `bench models`)")


def list_archs(pattern: str = "*") -> list[str]:
    return [f"{p}:{n}" for p in PREFIXES for n in _names(p) if fnmatch.fnmatch(f"{p}:{n}", pattern)]
