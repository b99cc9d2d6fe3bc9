"""The second pass of a cell's validation: every value that names something in a registry (architectures,
optimizers, schedules, losses, augmentations, test-time views, ...) looked up, so that a typo is one line
naming the key. Imported lazily by bench.config's readers: parsing a suite needs no torch."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bench.config import CellConfig
from bench.errors import UserError, did_you_mean


def _registry_checks(cfg: CellConfig) -> list[tuple[str, Any, Callable[[], Any]]]:
    """(dotted key, value, check) for every value that names something in a registry; a check raises
    ValueError with the reason. Imported here, not in bench.config, so that parsing needs no torch."""
    from bench.models import check_arch
    from bench.techniques import REGISTRIES, build_tta
    from bench.techniques.augment import check_augment

    def member(field: str, name: str) -> Callable[[], None]:
        def check() -> None:
            if name not in REGISTRIES[field]:
                raise ValueError(f"unknown {field} '{name}'; {did_you_mean(name, REGISTRIES[field])}")
        return check

    def optimizer_settings() -> None:  # what the optimizer would refuse only once the cell starts
        from bench.techniques.optimizers import optimizer_settings

        if t.optimizer in REGISTRIES["optimizer"]:
            try:
                optimizer_settings(t.optimizer, t)
            except UserError as e:
                raise ValueError(e.reason) from None

    def model_kwargs() -> None:  # the constructor's verdict, on the meta device: milliseconds
        from bench.models.factory import skeleton

        if cfg.model.kwargs:
            try:
                skeleton(cfg.model.arch, 2, cfg.data.image_size, cfg.model.kwargs)
            except UserError as e:
                raise ValueError(f"{e.reason}; {e.hint}") from None

    def layer_decay() -> None:
        if t.layer_decay is not None and not cfg.model.arch.startswith("timm:"):
            raise ValueError(f"layer-wise lr decay needs a timm: architecture (timm's group_matcher names its "
                             f"layers), not {cfg.model.arch}; use backbone_lr for one lower rate below the head")

    def on_device() -> None:
        from bench.data.device_augment import check
        from bench.techniques import build_augment

        if cfg.data.decode == "device" and (t.offline or t.aug_splits):
            raise ValueError('data.decode = "device" leaves the loader no pixels for offline copies or aug_splits '
                             'views: set data.decode = "host"')
        if t.augment_on == "device":
            check(build_augment(t.augment, 32))
        elif cfg.data.decode == "device" and build_augment(t.augment, 32) is not None:
            raise ValueError('data.decode = "device" leaves the loader no pixels to augment: set '
                             'train.augment_on = "device" too')

    t = cfg.train
    return [("model.arch", cfg.model.arch, lambda: check_arch(cfg.model.arch)),
            *[(f"train.{f}", getattr(t, f), member(f, getattr(t, f)))
              for f in ("optimizer", "schedule", "loss", "sampler", "mix")],
            ("train.betas", [t.optimizer, t.betas], optimizer_settings),
            ("train.layer_decay", [cfg.model.arch, t.layer_decay], layer_decay),
            ("model.kwargs", [cfg.model.arch, cfg.data.image_size, cfg.model.kwargs], model_kwargs),
            ("train.augment", t.augment, lambda: check_augment(t.augment)),
            ("train.augment_on", [t.augment, t.augment_on, cfg.data.decode, t.offline, t.aug_splits], on_device),
            ("train.tta", t.tta, lambda: build_tta(t.tta))]


def check_names(cfg: CellConfig, checked: dict[str, UserError | None] | None = None) -> None:
    """Raise UserError(key=the dotted key) for the first name no registry knows. `checked` memoises the
    verdict per (key, value): a 1,000-cell grid builds each augmentation pipeline once, not 1,000 times."""
    checked = {} if checked is None else checked
    for key, value, check in _registry_checks(cfg):
        memo = f"{key}={json.dumps(value, sort_keys=True)}"
        if memo not in checked:
            try:
                check()
                checked[memo] = None
            except ValueError as e:
                checked[memo] = UserError(str(e), key=key)
        if checked[memo] is not None:
            raise checked[memo]
