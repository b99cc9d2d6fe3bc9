"""The README documents every suite key, and its first lines hold the two commands CI and users run."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from bench.config import CellConfig, Resources, SuiteMeta
from bench.config.suite import Log

README = (Path(__file__).parent.parent / "README.md").read_text()


def _keys(model: type[BaseModel], prefix: str) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _keys(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


KEYS = [k for k in _keys(CellConfig, "") if k != "seed"] + _keys(SuiteMeta, "suite.") + _keys(Resources, "resources.") \
    + _keys(Log, "log.")


@pytest.mark.parametrize("key", KEYS)
def test_every_suite_key_is_in_the_readme_table(key):
    assert f"| `{key}` |" in README, f"README's key table lacks {key}"


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert "bench run suites/quickstart.toml" in block[0] and block[1].endswith("nox -s tests")
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert block[1] in ci


def test_the_recipes_suite_in_the_readme_loads_and_expands(tmp_path):
    """The RSB A3 block under "Recipes" is a suite that bench accepts, with every key as the text says."""
    from bench.config import load_suite
    from bench.suite import expand

    section = README.split("## Recipes", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "rsb_a3.toml"
    path.write_text(block)
    (cell,) = expand(load_suite(path))
    t = cell.config.train
    assert (cell.config.model.arch, cell.config.data.image_size) == ("timm:resnet50", 160)
    assert (t.optimizer, t.lr, t.weight_decay, t.loss, t.bce_target_threshold, t.mix, t.mix_alpha,
            t.cutmix_alpha, t.batch_size * t.accumulate) == ("lamb", 8e-3, 0.02, "bce", 0.2, "cutmix_mixup",
                                                             0.1, 1.0, 2048)
