"""The one exception type for everything a user can get wrong.

Library code raises `ReproError` with a message that reads as one complete line; the CLI prints that
line and exits with `exit_code`, never a traceback. It subclasses `ValueError` so library callers who
catch `ValueError` (bad model name, bad threshold, ...) see the same message.
"""


class ReproError(ValueError):
    """A user-facing error: one clear line, and the exit code the CLI should return."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):
        # Subclasses take other constructor arguments; across a process boundary (a grid's worker, a SLURM
        # job) the message and exit code are what matter, so every one travels as a plain ReproError.
        return ReproError, (str(self), self.exit_code)


class UnknownNameError(ReproError):
    """An unknown model, method, dataset, recipe or criterion: a usage error (exit code 2)."""

    def __init__(self, kind: str, name: str, valid):
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}", exit_code=2)


def check_name(kind: str, name: str, valid) -> str:
    """Return `name` if it is one of `valid`, else raise `UnknownNameError` listing the valid ones."""
    if name not in valid:
        raise UnknownNameError(kind, name, valid)
    return name


def error_reason(error: BaseException, limit: int = 160) -> str:
    """The first line of a library's exception message, cut at a word to at most `limit` characters (its
    type name when the message is empty): the part of someone else's error worth quoting in one line."""
    lines = str(error).strip().splitlines()
    reason = lines[0].rstrip(":") if lines else type(error).__name__
    if len(reason) > limit:
        reason = reason[:limit].rsplit(" ", 1)[0] + " ..."
    return reason
