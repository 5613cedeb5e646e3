"""User-facing error types: the CLI prints these as one line (no traceback unless --debug)."""


class DistilleryError(Exception):
    """An error caused by input, configuration or environment that the user can fix."""


class VersionExistsError(DistilleryError):
    """Raised when a step would write into an already complete (immutable) version."""


class VersionNotFoundError(DistilleryError):
    """Raised when a version reference cannot be resolved."""
