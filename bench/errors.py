"""The one exception type for mistakes a user can fix: the CLI prints it on one line and exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A bad suite, an unknown name, a missing folder: something the user fixes, not a bug."""

    def __init__(self, reason: str, *, file: object = None, key: str | None = None, hint: str | None = None):
        self.reason, self.file, self.key, self.hint = reason, file, key, hint
        super().__init__(self.line())

    def line(self) -> str:
        where = ": ".join(str(p) for p in (self.file, self.key) if p)
        text = f"{where}: {self.reason}" if where else self.reason
        return f"{text}; {self.hint}" if self.hint else text


def did_you_mean(word: str, choices: Iterable[str], *, limit: int = 12) -> str:
    """'did you mean X?' when something is close, else the list of valid choices (the torchvision way)."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    shown = ", ".join(choices[:limit]) + (", ..." if len(choices) > limit else "")
    return f"valid choices: {shown}"


def first_line(e: BaseException | object, *, typed: bool = False) -> str:
    """An exception as one line for a UserError or a record (parsers' and kernels' messages run over several);
    its type name when it says nothing, or in front of the line with `typed`. An error a DataLoader worker
    raised, which torch re-raises as "Caught X in DataLoader worker process N" and its traceback, is the
    worker's own last line."""
    text = str(e).strip()
    name = type(e).__name__
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:  # re-raised from a DataLoader worker
        last = text.splitlines()[-1]  # "module.Type: message", the worker's own exception
        kind, sep, message = last.partition(": ")
        if sep and kind.replace(".", "").replace("_", "").isalnum():
            name, text = kind.rsplit(".", 1)[-1], message.strip()
    if not text:
        return name
    return f"{name}: {text.splitlines()[0]}" if typed else text.splitlines()[0]
