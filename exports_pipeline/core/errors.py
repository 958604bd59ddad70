"""Errors a user can act on: each message names what is wrong (never a secret)."""

from __future__ import annotations


class ExportError(Exception):
    """Base class: the export failed for a reason stated in the message."""


class InvalidInputError(ExportError):
    """A campaign id or run option that cannot be used (bad input, never retried)."""


class CampaignNotFoundError(InvalidInputError):
    """The campaign id is well-formed but not in the source."""


class SourceSchemaError(ExportError):
    """The source lacks a table or column, or holds a value the export cannot represent."""


class SourceUnavailableError(ExportError):
    """The source database could not be reached, or it dropped or timed out the read (transient: retried)."""


class SourceReadError(ExportError):
    """The source refused a read for a reason that a retry would meet again."""


class ConfigurationError(ExportError):
    """Settings (environment, destination) are missing or inconsistent."""


class UnsupportedSourceError(ConfigurationError, ValueError):
    """A source URL of a database the export does not read (a ValueError too: the seed's callers catch that)."""


class PublicationError(ExportError):
    """Writing the snapshot to the destination failed; nothing was published."""


class BlockingCheckError(ExportError):
    """A blocking check failed before publication; nothing was published."""


class DestinationError(ExportError):
    """The destination could not be read, listed or cleaned up (links, retention)."""


class DestinationUnavailableError(ExportError):
    """The destination could not be reached, failed on its side (5xx) or throttled us (transient: retried)."""


# What a retry can mend. Everything else (bad input, bad data, schema, configuration, a bug) fails at once.
TRANSIENT_ERRORS = (SourceUnavailableError, DestinationUnavailableError)
