"""mkdocs hook: the markers in docs/ become what is written elsewhere, once, as the site builds: the home page is
the README (its links into docs/ made relative to the site), the reference pages what bench.reference writes
from the code."""

from __future__ import annotations

import re
from pathlib import Path

from bench.reference import cli_markdown, keys_markdown


def readme(config) -> str:
    text = (Path(config["config_file_path"]).parent / "README.md").read_text()
    return re.sub(r"\]\(docs/", "](", text)


def on_page_markdown(markdown: str, page, config, **kwargs) -> str:
    markers = {"<!-- bench:readme -->": lambda: readme(config), "<!-- bench:keys -->": keys_markdown,
               "<!-- bench:cli -->": cli_markdown}
    for marker, write in markers.items():
        if marker in markdown:
            markdown = markdown.replace(marker, write())
    return markdown
