"""Errors raised on bad input.

Every problem with a user's data is reported as an :class:`ASLInputError` that
names the file, the field and what to do about it, so the command-line tools
can print it and exit non-zero without a traceback.
"""

from __future__ import annotations

from os import PathLike


class ASLInputError(ValueError):
    """A problem with the input data that the user has to fix.

    Parameters
    ----------
    problem
        What is wrong, in one sentence.
    file
        The file where the problem is (a path), or ``None`` for in-memory data.
    field
        The sidecar field, TSV column or image property concerned.
    fix
        What the user should do about it.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | PathLike | None = None,
        field: str | None = None,
        fix: str | None = None,
    ):
        self.problem = problem
        self.file = None if file is None else str(file)
        self.field = field
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(f"{self.file}")
        if self.field:
            parts.append(f"field '{self.field}'")
        where = ": ".join(parts)
        msg = f"{where}: {self.problem}" if where else self.problem
        if self.fix:
            msg += f" Fix: {self.fix}"
        return msg


class ASLInputErrors(ASLInputError):
    """Several input problems found in one pass; ``errors`` holds each one.

    Behaves as its first problem for callers that only catch
    :class:`ASLInputError`; the command-line tools print every one.
    """

    def __init__(self, errors):
        self.errors = tuple(errors)
        if not self.errors:
            raise ValueError("ASLInputErrors needs at least one error")
        first = self.errors[0]
        super().__init__(first.problem, file=first.file, field=first.field, fix=first.fix)
