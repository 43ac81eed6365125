"""Every error reconcile raises on purpose, grouped by cause.

The CLI maps a class to an exit code and prints ``str(error)`` (never a traceback):
``ConfigError`` and its children exit 2 (the user's input is wrong), every other
``ReconcileError`` exits 1 (the operation failed). Messages say which file, key or
model, what was expected and how to fix it. They never contain secrets: anything
that may carry a token (URLs with credentials, headers) is scrubbed by the raiser.
"""

from __future__ import annotations


class ReconcileError(Exception):
    """Base of all errors reconcile reports to a user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(ReconcileError):
    """models.toml (or an argument) is invalid; fixing the input fixes it."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = file or ""
        if line is not None:
            where += f":{line}"
        if key:
            where += f"{': ' if where else ''}{key}"
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.file, self.key, self.line = file, key, line
        self.reason = message  # without the place: for callers that name it otherwise


class UsageError(ConfigError):
    """A command-line argument is wrong."""


class LockError(ReconcileError):
    """models.lock is missing, stale, unreadable, or disagrees with the manifest."""


class ModelsFailed(LockError):
    """Several models failed to lock; each is named, so one run shows every fix needed."""

    def __init__(self, failures: list[tuple[str, ReconcileError]]) -> None:
        lines = [f"{len(failures)} models failed to lock:"]
        lines += ["  " + str(err).replace("\n", "\n  ") for _, err in failures]
        super().__init__("\n".join(lines))
        self.failures = failures
        self.exit_code = max(err.exit_code for _, err in failures)


class LockFileInvalid(LockError):
    """models.lock cannot be parsed; regenerate it with `reconcile lock`."""

    exit_code = 2


class SourceError(ReconcileError):
    """A source could not resolve or deliver a model (network, protocol, server)."""


class NotFound(SourceError):
    """The repository, revision, object or file does not exist at the source."""


class AuthRequired(SourceError):
    """The source needs credentials that were not given or were refused."""


class Gated(AuthRequired):
    """The repository is gated: its licence must be accepted on the hub first."""


class Transient(SourceError):
    """A failure worth retrying (connection reset, 5xx, 429); ``retry_after`` in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Restart(Transient):
    """A resume was answered with the whole entity (the file changed, or the server
    ignores ranges): the partial is discarded and the file fetched from byte 0."""


class ChangedSinceLock(SourceError):
    """The source now serves different bytes than the lock pinned."""


class IntegrityError(ReconcileError):
    """Bytes or a tree do not match the hash that was expected."""


class Mismatch(IntegrityError):
    """Fetched bytes hash to another sha256 than the lock's: what they were, so a caller
    that is not the model's source (the team cache) can say whose bytes they were."""

    def __init__(self, message: str, *, sha256: str, size: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.sha256, self.size = sha256, size


class ValidationFailed(ReconcileError):
    """A validator with onFailure = abort rejected a model."""


class StoreError(ReconcileError):
    """The store cannot be written (disk full, permissions) or is corrupt."""


class FormatError(ReconcileError):
    """A model file is not what its format says (a GGUF header that cannot be read):
    which file, at which byte, and what was wrong there."""

    def __init__(self, message: str, *, file: str, offset: int | None = None,
                 hint: str | None = None) -> None:
        where = file if offset is None else f"{file} (byte {offset})"
        super().__init__(f"{where}: {message}", hint=hint)
        self.file, self.offset, self.reason = file, offset, message
