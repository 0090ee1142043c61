"""Text typed on a command line turned into values, with one-line errors that name the option.

Used by `repro train` (list options), `repro sweep` (threshold lists) and `repro grid --set key=value`.
"""

from __future__ import annotations

from repro.errors import ReproError


def number_list(text: str, flag: str, kind: type = float) -> list:
    """'0.1, 0.2' -> [0.1, 0.2] (kind float) or '0,2,4' -> [0, 2, 4] (kind int); empty parts are skipped."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return [kind(part) for part in parts]
    except ValueError:
        what, example = ("integers", "0,1,2") if kind is int else ("numbers", "1,1,0.5")
        raise ReproError(f"{flag} must be comma-separated {what}, e.g. {example}; got {text!r}") from None


def key_value(text: str, flag: str) -> tuple[str, str]:
    """'cost_weight=0.1' -> ('cost_weight', '0.1')."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ReproError(f"{flag} takes KEY=VALUE, e.g. {flag} data_dir=../shared/data; got {text!r}")
    return key.strip(), value.strip()
