"""The project's own error types.

Validation errors name the offending field so that forms, uploads and settings
can tell an operator exactly what to fix. Adapters translate client errors into
``TransientError`` (retry later) or ``PermanentError`` (give up, say why).
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Base class of every error this project raises on purpose."""


class ValidationError(SchedulerError, ValueError):
    """Bad input: ``field`` names what is wrong, ``message`` says why."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class TransientError(SchedulerError):
    """A failure worth retrying after ``delay`` seconds."""

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        self.delay = delay
        super().__init__(message)


class PermanentError(SchedulerError):
    """A failure that retrying will not fix."""


class ReservationError(SchedulerError):
    """A slice could not be reserved on a GPU (it no longer fits)."""
