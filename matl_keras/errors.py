"""Errors that are the user's to fix (bad config, bad data, broken plugin).

The CLI prints these as one line and exits non-zero; any other exception is a
bug in matl-keras and keeps its traceback.
"""


class MatlError(Exception):
    """Base class of errors caused by input the user controls."""


class ConfigError(MatlError, ValueError):
    """A flag, gin binding or argument has a value that cannot work."""


class DataError(MatlError, ValueError):
    """A dataset is missing, malformed or holds unreadable files."""


class PluginError(MatlError, LookupError):
    """A plugin is unknown, failed to load or breaks its contract."""


class WriteError(MatlError, OSError):
    """A file of the run cannot be written (disk full, quota, file size
    limit, read-only filesystem)."""
