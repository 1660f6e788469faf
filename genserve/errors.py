"""The one exception hierarchy. Pipelines and deployments raise these; only the ingress maps
them to HTTP status codes (`status_code`), so model code never knows about HTTP."""

from __future__ import annotations


class GenserveError(Exception):
    """Base class. ``field`` names the request field at fault, when there is one."""

    status_code = 500

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __reduce__(self):
        # Ray re-raises exceptions across processes by pickling them; keep both arguments.
        return (type(self), (self.message, self.field))


class InvalidInput(GenserveError):
    """The request is well-formed JSON but a value cannot be used (HTTP 422)."""

    status_code = 422


class NotFound(GenserveError):
    """A referenced resource (LoRA, file, job) does not exist (HTTP 404)."""

    status_code = 404


class Unavailable(GenserveError):
    """Temporarily unable to serve: out of GPU memory, model not loaded (HTTP 503)."""

    status_code = 503


class PipelineBroken(GenserveError):
    """The model can no longer run (e.g. a dead CUDA context); the replica must be replaced."""

    status_code = 503
