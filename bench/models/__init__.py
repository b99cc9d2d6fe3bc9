"""Architectures from three registries behind one name: `timm:<name>`, `tv:<name>`, `bench:<name>`.

create_model, check_arch and list_archs are the entry points. The rest lives in the module named for it:
names (parsing, checking, listing), factory (creation, hub weights), builtins (the studies' own networks),
heads (the classifier, pooling), freeze (freezing, parameter counts), plugins (your own networks).
"""

from bench.models.factory import create_model
from bench.models.names import check_arch, list_archs
from bench.models.plugins import load_plugins, register_model

load_plugins()

__all__ = ["check_arch", "create_model", "list_archs", "register_model"]
