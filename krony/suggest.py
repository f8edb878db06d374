"""' (did you mean X?)' for a mistyped name: the one helper every error message uses."""

from __future__ import annotations

import difflib
import typing


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean X?)' for the closest of `choices`, compared case-insensitively; '' if none is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]}?)" if close else ""


__all__ = ["suggest"]
