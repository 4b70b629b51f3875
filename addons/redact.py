"""Removing secrets from everything the gateway stores or prints."""

from __future__ import annotations

from collections.abc import Iterable

REDACTED = "[redacted]"


class Redactor:
    """Replaces every known secret value in text and bytes with `[redacted]`.

    Secrets shorter than 8 characters are ignored, because replacing them would also hit
    ordinary words; real provider keys are far longer.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)
        self._secret_bytes = [s.encode() for s in self.secrets]

    def text(self, value: str | None) -> str | None:
        if not value or not self.secrets:
            return value
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def bytes(self, value: bytes | None) -> bytes | None:
        if not value or not self._secret_bytes:
            return value
        for secret in self._secret_bytes:
            if secret in value:
                value = value.replace(secret, REDACTED.encode())
        return value
