"""A problem found while checking configuration or data, phrased for an admin."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One finding: where it is (file plus line or key), what is wrong, how to fix it."""

    file: str
    where: str  # "line 3" or "key auth.passwd_file"
    message: str
    fix: str = ""
    warning: bool = False  # works today but needs attention soon; `retrieval check` still exits 0

    def __str__(self) -> str:
        text = f"{self.file}: {self.where}: {'warning: ' if self.warning else ''}{self.message}"
        if self.fix:
            text += f" (fix: {self.fix})"
        return text


class ProblemsError(Exception):
    """Raised with every problem found, so an admin sees them all at once."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
