"""The one error type for bad user input.

Anything the user can fix (a missing file, a malformed line, an unknown reward, a layer that does
not exist) raises `InputError`; the CLI prints its message and exits with code 2, no traceback.
"""

from __future__ import annotations

from typing import Iterable

Check = tuple[bool, str, "str | None"]  # (holds, what is wrong, how to fix it)


class InputError(Exception):
    """Bad input: `what` went wrong, `where` (file, line, key), and how to `fix` it."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        parts = [what if where is None else f"{where}: {what}"]
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__("\n  ".join(parts))


def raise_first_failed(checks: Iterable[Check], where: str) -> None:
    """Raise `InputError(what, where, fix)` for the first check that does not hold (configs' validate())."""
    for holds, what, fix in checks:
        if not holds:
            raise InputError(what, where, fix)
