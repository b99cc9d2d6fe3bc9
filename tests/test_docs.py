"""The README and the documentation site: the README's first lines hold the two commands CI and users run, every
suite shown loads, and the key and command references are written from the code, so every key is documented
exactly once (its description in the schema)."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from bench.reference import TABLES, cli_markdown, keys, keys_markdown
from bench.techniques import REGISTRIES

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
PAGES = {p.relative_to(ROOT).as_posix(): p.read_text()
         for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]}
KEYS = {prefix + name: field for _, _, model, prefix in TABLES if prefix for name, field in keys(model).items()}
RANGE = {name: field for name, field in TABLES[-1][2].model_fields.items()}  # a tune.space range's own keys


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert "bench run suites/quickstart.toml" in block[0] and block[1].endswith("nox -s tests")
    ci = (ROOT / ".ci" / "run").read_text()
    assert block[1] in ci


def test_the_readme_is_short_and_links_every_page_of_the_site():
    assert len(README.splitlines()) <= 250
    nav = re.findall(r":\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    assert len(nav) >= 14
    unlinked = [p for p in nav if p != "index.md" and f"(docs/{p}" not in README]
    assert not unlinked, f"README links no {unlinked}"
    assert sorted(nav) == sorted(p.removeprefix("docs/") for p in PAGES if p.startswith("docs/")), \
        "every page of docs/ is in mkdocs.yml's nav, and every nav entry is a page"


@pytest.mark.parametrize("key", sorted(KEYS) + [f"tune.space.*.{name}" for name in RANGE])
def test_every_key_is_described_in_the_schema(key):
    description = (KEYS.get(key) or RANGE[key.rsplit(".", 1)[1]]).description or ""
    assert len(description.split()) >= 3, f"{key} has no description= in bench/config/"


def test_the_key_reference_has_one_row_per_key_with_its_default():
    rows = {m[1]: m[0] for m in re.finditer(r"^\| `([a-z0-9_.]+)` \|.*$", keys_markdown(), flags=re.M)}
    assert set(rows) == set(KEYS) | set(RANGE)
    cells = rows["train.lr"].split(" | ")
    assert cells[1:3] == ["float", "`0.01`"] and "> 0" in cells[3] and KEYS["train.lr"].description in cells[4]
    assert rows["train.precision"].split(" | ")[3] == '`"fp32"`, `"bf16"`, `"fp16"`'
    assert rows["suite.name"].split(" | ")[2] == "(required)" and rows["data.root"].split(" | ")[2] == "unset"


def _row(key: str) -> list[str]:
    (line,) = [r for r in keys_markdown().splitlines() if r.startswith(f"| `{key}` |")]
    return line.split(" | ")


@pytest.mark.parametrize("field", sorted(REGISTRIES))
def test_the_reference_row_of_a_registry_backed_key_names_every_registered_name(field):
    allowed = _row(f"train.{field}")[3]
    missing = [n for n in REGISTRIES[field] if f"`{n}`" not in allowed and f"`{n}:<" not in allowed]
    assert not missing, f"train.{field}'s row lacks {missing}"


def test_every_table_of_a_suite_has_a_section_in_the_reference():
    """A table added to the schema (a model-typed field) without a TABLES entry would go undocumented."""
    from bench.config import CellConfig, Suite

    def models(model, prefix):
        for name, field in model.model_fields.items():
            ann = field.annotation
            for a in (ann, *typing.get_args(ann)):
                if isinstance(a, type) and issubclass(a, BaseModel):
                    yield f"{prefix}{name}"
                    yield from models(a, f"{prefix}{name}.")

    documented = {prefix.rstrip(".") or "tune.space" for _, _, _, prefix in TABLES}
    assert set(models(Suite, "")) | set(models(CellConfig, "")) == documented


def test_nothing_about_a_key_is_written_by_hand():
    """Key tables live only in the generated reference: a hand-written row would drift from the schema."""
    for page, text in PAGES.items():
        rows = [k for k in re.findall(r"^\| `([a-z_]+\.[a-z0-9_.]+)` \|", text, flags=re.M) if k in KEYS]
        assert not rows, f"{page} documents {rows} by hand: give the field a description= instead"


def test_the_command_reference_has_every_command_and_option():
    import click
    from typer.main import get_command

    from bench.cli import app

    text = cli_markdown()

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            yield f"{path} {name}", sub
            yield from walk(sub, f"{path} {name}")

    commands = list(walk(get_command(app), "bench"))
    assert len(commands) >= 10
    for name, command in commands:
        assert f"`{name}`" in text, name
        options = [opt for p in command.params if isinstance(p, click.Option) for opt in p.opts]
        assert all(f"`{opt}" in text for opt in options), (name, options)


def _toml_blocks():
    for page, text in PAGES.items():
        for i, block in enumerate(re.findall(r"^```toml\n(.*?)^```", text, flags=re.M | re.S)):
            yield pytest.param(block, id=f"{page}#{i}")


@pytest.mark.parametrize("block", list(_toml_blocks()))
def test_every_suite_shown_in_the_docs_loads_and_expands(block, tmp_path):
    """A whole suite, or a fragment of one under a `[suite]` table: bench plans it as written (every key, name
    and tuned range checked; not its data folders, weights or device)."""
    from bench.api import plan

    path = tmp_path / "shown.toml"
    path.write_text(block if re.search(r"^\[suite\]", block, flags=re.M) else f'[suite]\nname = "docs"\n{block}')
    assert plan(path, check=False).cells


def test_the_recipes_suite_in_the_docs_loads_with_every_key_as_the_text_says(tmp_path):
    """The RSB A3 block under "Recipes" is a suite that bench accepts, with every key as the text says."""
    from bench.config import load_suite
    from bench.suite import expand

    section = PAGES["docs/techniques.md"].split("## Recipes", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "rsb_a3.toml"
    path.write_text(block)
    (cell,) = expand(load_suite(path))
    t = cell.config.train
    assert (cell.config.model.arch, cell.config.data.image_size) == ("timm:resnet50", 160)
    assert (t.optimizer, t.lr, t.weight_decay, t.loss, t.bce_target_threshold, t.mix, t.mix_alpha,
            t.cutmix_alpha, t.batch_size * t.accumulate) == ("lamb", 8e-3, 0.02, "bce", 0.2, "cutmix_mixup",
                                                             0.1, 1.0, 2048)


@pytest.mark.slow
def test_the_site_builds_strictly_with_the_references_written_from_the_code(tmp_path):
    """`mkdocs build --strict` (what `nox -s docs` runs): every link and anchor resolves, and the built pages
    hold every key's row and every command."""
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    html = (site / "reference" / "keys" / "index.html").read_text()
    assert all(f"<code>{key}</code>" in html for key in KEYS)
    assert "bench:keys" not in html
    assert "<code>bench log</code>" in (site / "reference" / "cli" / "index.html").read_text()
