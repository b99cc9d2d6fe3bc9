"""The output formats, one registered function each: a Table in, text out. The text formats print a
Table's sections (the cross-dataset ranking) after it, each as a table of its own with its notes; csv and
json write the Table's data alone, one record per leaderboard row, where the sections' figures are columns."""

from __future__ import annotations

import html
import io
from collections.abc import Callable

from bench.registry import register
from bench.report.table import Table

FORMATS: dict[str, Callable[[Table], str]] = {}


def _styled(table: Table, style: Callable[[str], str], escape: Callable[[str], str] = str) -> list[list[str]]:
    return [[style(escape(v)) if b else escape(v) for v, b in zip(row, flags, strict=True)]
            for row, flags in zip(table.rows, table.bold, strict=True)]


@register(FORMATS, "markdown")
def _markdown(table: Table) -> str:
    """A GitHub pipe table, as tabulate's "github" format lays it out; written directly because tabulate
    spends most of a 10,000-row report guessing column types."""
    rows = _styled(table, lambda v: f"**{v}**")
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(table.headers)]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) + " |"
             for line in [table.headers, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    # a blank line before the list: Python-Markdown (mkdocs) does not let a list interrupt a paragraph
    notes = table.notes[:1] + [""] * (len(table.notes) > 1) + [f"- {n}" for n in table.notes[1:]]
    text = f"### {table.title}\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    return text + "".join("\n" + _markdown(s) for s in table.sections)


@register(FORMATS, "csv")
def _csv(table: Table) -> str:
    return table.data.to_csv(index=False)


@register(FORMATS, "json")
def _json(table: Table) -> str:
    return table.data.to_json(orient="records", indent=2) + "\n"


_LATEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
          "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
          "±": r"$\pm$", "—": "---", "–": "--", "×": r"$\times$", "†": r"\textsuperscript{\dag}",
          "‡": r"\textsuperscript{\ddag}", "§": r"\textsuperscript{\S}", "¶": r"\textsuperscript{\P}",
          "²": r"\textsuperscript{2}", "*": r"\textsuperscript{*}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


@register(FORMATS, "latex")
def _latex(table: Table) -> str:
    """A booktabs table (\\usepackage{booktabs}); footnotes under the rule, title as the caption."""
    spec = "l" * table.lead + "r" * (len(table.headers) - table.lead)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.title)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in table.headers) + r" \\", r"\midrule"]
    lines += [" & ".join(row) + r" \\" for row in _styled(table, lambda v: rf"\textbf{{{v}}}", latex_escape)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\par\smallskip{{\footnotesize {latex_escape(n)}}}" for n in table.notes]
    return "\n".join([*lines, r"\end{table}"]) + "\n" + "".join("\n" + _latex(s) for s in table.sections)


@register(FORMATS, "html")
def _html(table: Table) -> str:
    def cell(tag: str, v: str) -> str:
        return f"<{tag}>{v}</{tag}>"

    head = "<tr>" + "".join(cell("th", html.escape(h)) for h in table.headers) + "</tr>"
    body = ["<tr>" + "".join(cell("td", v) for v in row) + "</tr>"
            for row in _styled(table, lambda v: f"<b>{v}</b>", html.escape)]
    notes = "".join(f"<p>{html.escape(n)}</p>\n" for n in table.notes)
    return (f"<table>\n<caption>{html.escape(table.title)}</caption>\n<thead>{head}</thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table>\n" + notes + "".join(_html(s) for s in table.sections))


@register(FORMATS, "table")
def _terminal(table: Table) -> str:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = Console(record=True, width=200, file=io.StringIO())
    for part in (table, *table.sections):
        out = RichTable(title=part.title)
        for h in part.headers:
            out.add_column(escape(h))
        for row in _styled(part, lambda v: f"[bold]{v}[/bold]", escape):
            out.add_row(*row)
        console.print(out)
        for note in part.notes:
            console.print(note, markup=False, highlight=False)
    return console.export_text()

