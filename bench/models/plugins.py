"""Your own architectures, `bench:<name>`: Python files (or importable modules) named in the BENCH_PLUGINS
environment variable, separated by the path separator, are imported when bench's model registry loads, in
`bench run` and in every cell's process. A plugin registers a network with `@register_model("name")`."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable

from bench.errors import UserError
from bench.hashing import stable_hash
from bench.models.builtins import BUILTINS
from bench.registry import register

ENV = "BENCH_PLUGINS"


def register_model(name: str) -> Callable:
    """Register a network class or factory as `bench:<name>`. It is called as fn(num_classes, image_size)
    when its signature takes image_size, else fn(num_classes), and should set `min_size`, the smallest image
    side its forward accepts."""
    return register(BUILTINS, name)


def load_plugins() -> None:
    for entry in filter(None, os.environ.get(ENV, "").split(os.pathsep)):
        name = f"bench_plugin_{stable_hash(os.path.abspath(entry), 10)}" if entry.endswith(".py") else entry
        if name in sys.modules:
            continue
        try:
            if entry.endswith(".py"):
                spec = importlib.util.spec_from_file_location(name, entry)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(entry)
        except FileNotFoundError:
            sys.modules.pop(name, None)
            raise UserError("no such file", file=entry, key=ENV, hint="name Python files or modules, separated "
                                                                      f"by '{os.pathsep}'") from None
        except Exception as e:
            sys.modules.pop(name, None)
            raise UserError(f"the plugin failed to import ({type(e).__name__}: {e})", file=entry, key=ENV,
                            hint="fix it, or remove it from BENCH_PLUGINS") from None


__all__ = ["load_plugins", "register_model"]
