"""`[model]`: the architecture, its starting weights, the classifier head, and what trains."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from bench.config.base import Strict

FREEZE_PATTERN = re.compile(r"^(none|all_but_head|features|(first|last|last_conv):\d+)$")


class ModelConfig(Strict):
    """The network: architecture, starting weights, the classifier head, and what trains."""

    arch: str = "bench:small_cnn"  # prefix:name, see `bench models`
    pretrained: bool | str = False  # false | true (hub weights) | path to a .safetensors/.pt state dict
    # none | all_but_head | features | first:N | last:N (N layers with weights) | last_conv:N (convolutions)
    freeze: str = "none"
    init_from: str | None = None  # label of a [[cells]] entry whose best weights this cell starts from
    # keyword arguments of the architecture's constructor (timm.create_model, torchvision's builders, a
    # built-in), e.g. {drop_path_rate = 0.1}; a grid axis as "model.kwargs.drop_path_rate" = [0, 0.1]
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # the head, replacing the architecture's classifier (README, "Models, heads, freezing and staged cells")
    pool: Literal["avg", "max", "avgmax"] | None = None  # global pooling; unset: the architecture's own
    head_hidden: tuple[int, ...] = ()  # widths of dense layers between the pooled features and the classes
    head_activation: Literal["relu", "gelu", "silu", "tanh", "elu", "leaky_relu"] = "relu"  # after each hidden
    head_dropout: float = Field(0.0, ge=0, lt=1)  # dropout before each linear layer of the head
    # what the head replaces: "last" (the class layer) or "classifier" (VGG's and AlexNet's whole dense
    # classifier and adaptive pooling: the head reads the convolutional base's flattened output, study 000)
    head_replaces: Literal["last", "classifier"] = "last"

    def head_options(self) -> dict[str, Any]:
        """bench.models.heads.build_head's keyword arguments."""
        return {"pool": self.pool, "hidden": self.head_hidden, "activation": self.head_activation,
                "dropout": self.head_dropout, "replaces": self.head_replaces}

    @field_validator("freeze")
    @classmethod
    def _freeze_syntax(cls, v: str) -> str:
        if not FREEZE_PATTERN.match(v):
            raise ValueError(f"'{v}' is not a freeze mode; use none, all_but_head, features, first:N, last:N "
                             "or last_conv:N")
        return v

    @field_validator("head_hidden")
    @classmethod
    def _positive_widths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(w < 1 for w in v):
            raise ValueError("head_hidden widths must be >= 1, e.g. [256]")
        return v
