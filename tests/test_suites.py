"""Every shipped suite validates, and runs every one of its cells under --smoke; the smoke transform keeps
cells apart; reading a suite needs no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import load_suite
from bench.smoke import smoke_suite
from bench.suite import expand

SUITES = sorted(Path(__file__).parent.parent.glob("suites/*.toml"))


def test_there_are_shipped_suites():
    assert len(SUITES) >= 7


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suite_validates_and_every_cell_has_its_own_smoke_cell(path):
    suite = load_suite(path)
    cells = expand(suite)  # schema and registry names, every cell
    smoke = expand(smoke_suite(suite))
    assert len({c.id for c in cells}) == len(cells)
    assert len({c.id for c in smoke}) == len(smoke) == len(cells)
    # the smoke cells are the suite's cells, in the same order, with the same labels and stages
    assert [c.explicit_label for c in smoke] == [c.explicit_label for c in cells]
    assert [c.config.model.arch for c in smoke] == [c.config.model.arch for c in cells]
    assert [c.parent is None for c in smoke] == [c.parent is None for c in cells]
    for s, c in zip(smoke, cells, strict=True):
        # no hub weights: none, or random stand-in weights where only they keep two cells apart
        assert s.config.train.max_steps == 2 and (s.config.model.pretrained is False or (
            c.config.model.pretrained is True and "smoke" in s.config.model.pretrained))
        assert s.config.data.source == c.config.data.source  # the stand-in keeps the suite's own format


def test_smoke_keeps_apart_the_cells_that_shrinking_would_merge(write_suite):
    path = write_suite("""
        [[cells]]
        label = "short"
        "train.epochs" = 10

        [[cells]]
        label = "long"
        "train.epochs" = 20

        [[cells]]
        label = "long-big-batch"
        "train.epochs" = 20
        "train.batch_size" = 256

        [[cells]]
        label = "other-arch"
        "model.arch" = "bench:mlp"
        "train.epochs" = 50
    """)
    smoke = {c.explicit_label: c.config.train for c in expand(smoke_suite(load_suite(path)))}
    assert len(smoke) == 4
    # short/long differ only in epochs and long/long-big-batch only in batch size: both keys are spread,
    # in the order of the real values; the MLP cell differs in its architecture anyway
    assert smoke["short"].epochs < smoke["long"].epochs < smoke["other-arch"].epochs
    assert smoke["long"].batch_size < smoke["long-big-batch"].batch_size
    assert max(t.epochs for t in smoke.values()) <= 3 and max(t.batch_size for t in smoke.values()) <= 8


def test_smoke_shrinks_keys_no_cell_varies_to_one_small_value(write_suite):
    path = write_suite('[grid]\n"model.arch" = ["bench:mlp", "bench:small_cnn"]\n"train.epochs" = [30]\n')
    smoke = expand(smoke_suite(load_suite(path)))
    assert {(c.config.train.epochs, c.config.train.batch_size) for c in smoke} == {(1, 8)}  # TINY: batch 16
    assert smoke_suite(load_suite(path)).suite.name == "tiny-smoke"


def test_smoke_refuses_cells_that_differ_only_in_what_it_cannot_keep(write_suite):
    from bench.errors import UserError

    path = write_suite('[model]\narch = "tv:resnet18"\n[grid]\n"model.pretrained" = [true, false]\n')
    with pytest.raises(UserError, match="resolve to the same config"):
        expand(smoke_suite(load_suite(path)))


def test_reading_and_validating_a_suite_file_imports_no_torch():
    code = ("import sys; from bench.config import load_suite; load_suite('suites/quickstart.toml'); "
            "import bench.config, bench.errors; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
