"""The one exception class of attnkit."""

from __future__ import annotations

__all__ = ["AttnkitError"]


class AttnkitError(ValueError):
    """Raised for any invalid argument or unsupported request.

    Every message says what was expected, what was got, and how to fix it, e.g.
    ``expected key of shape (B, G, S, D) with D=64 like query, got (2, 8, 128, 32)``.
    """

    @classmethod
    def build(cls, expected: str, got: str, fix: str | None = None) -> "AttnkitError":
        """Compose the standard ``expected ..., got ...; fix: ...`` message."""
        msg = f"expected {expected}, got {got}"
        if fix:
            msg += f"; fix: {fix}"
        return cls(msg)
