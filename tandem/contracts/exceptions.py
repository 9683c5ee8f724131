"""The root of every tandem error, and the errors of the shared contracts."""

from __future__ import annotations


class TandemError(Exception):
    """Root of all tandem errors.

    ``retriable`` tells a caller whether trying the same thing again may succeed.
    """

    retriable: bool = False


class ValidationError(TandemError, ValueError):
    """Input that breaks a contract; ``field`` names the offending field."""

    def __init__(self, field: str, rule: str, index: int | None = None) -> None:
        self.field = field
        self.rule = rule
        self.index = index
        where = f"[{index}]." if index is not None else ""
        super().__init__(f"{where}{field}: {rule}")

    def at(self, index: int) -> ValidationError:
        """The same error, located at position ``index`` of a batch."""
        return ValidationError(self.field, self.rule, index)


class CodecError(TandemError):
    """Bytes that are not an encoded candidate list."""


class ConfigError(TandemError):
    """A setting that cannot be used; the message names the environment variable."""


class WaitTimeout(TandemError, TimeoutError):
    """Something awaited with a bound did not happen in time; the message says what."""

    retriable = True


class ServiceError(TandemError):
    """An embedded or external service that could not be started or reached."""

    retriable = True
