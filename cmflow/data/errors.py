"""Errors of the data service."""
from ..errors import CmflowError


class DataError(CmflowError):
    """A data operation that cannot be done: unknown name, bad name, a service that does not answer."""

    exit_status = 1


class Exists(DataError):
    pass


class NotFound(DataError):
    pass


class Unavailable(DataError):
    """A service or database that did not answer (in time)."""
