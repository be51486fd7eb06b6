"""Exception types of the controller and their HTTP mapping (in one place: app.py's handler).

Each type's docstring is its default message. Driver errors are the loop's (recorded as the
endpoint's state, retried after a back-off); permanent errors mean the request itself is
wrong. A busy database is answered 503 with Retry-After by app.py."""

from __future__ import annotations


class CloudpilotError(Exception):
    """Something went wrong in cloudpilot."""

    status_code = 500

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class DriverError(CloudpilotError):
    """An endpoint's driver could not do what it was asked; the loop records the message as
    the endpoint's state and tries again after a back-off."""


class DriverSetupError(DriverError):
    """An endpoint's driver cannot work here until something is installed or configured."""


class PermanentError(CloudpilotError):
    """The request cannot succeed as it is."""

    status_code = 400


class InvalidInput(PermanentError):
    """The request is not valid."""

    status_code = 422


class Unauthorized(PermanentError):
    """A valid bearer token is required."""

    status_code = 401


class Forbidden(PermanentError):
    """This token may not do that."""

    status_code = 403


class NotFound(PermanentError):
    """No such object."""

    status_code = 404


class Conflict(PermanentError):
    """The object is not in a state that allows this."""

    status_code = 409


class TooLarge(PermanentError):
    """The request is too large."""

    status_code = 413


class FileStoreFull(PermanentError):
    """The file store cannot take these bytes (the owner's quota, or its disk): what is stored
    already is kept."""

    status_code = 507


class Fenced(Conflict):
    """A late result of a deposed reconcile-loop leader: another leader took over since (its
    epoch is higher), so the result is refused (issue 26)."""


class ConfigError(PermanentError):
    """The configuration is not valid."""


class BackupError(PermanentError):
    """A backup or a restore cannot be made as asked (the message says what to do)."""


class TemporaryError(CloudpilotError):
    """The controller cannot do that now; retry later (answered with Retry-After)."""

    status_code = 503


class StorageError(TemporaryError):
    """The database could not do that; retry later."""


class StorageBusy(StorageError):
    """The database is busy; retry."""


class StorageReadOnly(StorageError):
    """The database is read-only: the controller answers reads but cannot write."""


class StorageFull(StorageError):
    """The database's disk is full: the controller answers reads but cannot write."""

    status_code = 507
