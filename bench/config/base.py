"""What the schema models share: the strict base class and the pattern names must match."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# suite and [[datasets]] names: letters, digits, _ . - (a suite's name is its results folder)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
