"""Filter that removes secret values from text before it is shown."""

from __future__ import annotations

from collections.abc import Iterable

DOCUMENTATION = r"""
name: redact
short_description: Replace secret values in a text
description:
  - Replaces every occurrence of each secret in the input with C(********).
  - When a secret is shorter than O(min_length), replacing it would mangle the
    text (and a guessable hint would remain), so the whole text is withheld.
positional: secrets
options:
  _input: {description: Text to clean., type: str, required: true}
  secrets: {description: Secret values., type: list, elements: str, required: true}
  min_length: {description: Shortest secret replaced in place., type: int, default: 4}
"""

EXAMPLES = r"""
msg: "{{ result.msg | buddo.deploy.redact(app_container_env.values()) }}"
"""

RETURN = r"""
_value: {description: The text without the secrets., type: str}
"""

MASK = "********"
WITHHELD = "(details withheld: they may contain secret values)"


def redact(text: object, secrets: Iterable[object], min_length: int = 4) -> str:
    cleaned = str(text)
    values = sorted({str(s) for s in secrets if s is not None and str(s) != ""}, key=len, reverse=True)
    for value in values:
        if value not in cleaned:
            continue
        if len(value) < min_length:
            return WITHHELD
        cleaned = cleaned.replace(value, MASK)
    return cleaned


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {"redact": redact}
