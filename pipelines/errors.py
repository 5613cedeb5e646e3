"""User-facing error types: the CLI prints these as one line (no traceback unless --debug)."""


class DistilleryError(Exception):
    """An error caused by input, configuration or environment that the user can fix."""


class VersionExistsError(DistilleryError):
    """Raised when a step would write into an already complete (immutable) version."""

    def __init__(self, message: str, version_id: str):
        super().__init__(message)
        self.version_id = version_id


class VersionNotFoundError(DistilleryError):
    """Raised when a version reference cannot be resolved."""


class InputChangedError(DistilleryError):
    """Raised when an input's bytes change while a step reads them: what was written from it is discarded."""
