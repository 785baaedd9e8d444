"""Remove secret values from a text before it is shown."""

from __future__ import annotations

from collections.abc import Iterable

MASK = "********"
WITHHELD = "(details withheld: they may contain secret values)"


def redact(text: object, secrets: Iterable[object], min_length: int = 4) -> str:
    """Replace each secret with ``********``; a secret shorter than ``min_length`` cannot be
    replaced without mangling the text (and a guessable hint would remain), so the whole
    text is withheld."""
    cleaned = str(text)
    values = sorted({str(s) for s in secrets if s is not None and str(s) != ""}, key=len, reverse=True)
    for value in values:
        if value not in cleaned:
            continue
        if len(value) < min_length:
            return WITHHELD
        cleaned = cleaned.replace(value, MASK)
    return cleaned
