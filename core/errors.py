"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class PersonaError(Exception):
    """Base class: the message is what the user reads, so make it one clear line."""

    exit_code = 1


class InputError(PersonaError):
    """A bad path, an unknown format, a file that is not what it claims to be."""

    exit_code = 2


class NotBuiltError(PersonaError):
    """A stage needs a table or model that has not been built yet."""

    exit_code = 3


class ServiceError(PersonaError):
    """An external service (Redis, a SQL server) is unreachable or refused."""

    exit_code = 4
