"""User-facing error types of the onnlab workflows.

The CLI turns every `OnnlabError` (and the typed device errors of `drivers.errors`) into one
line on stderr and exit code 2. Everything else is a bug and keeps its traceback. So input is
checked, and its errors converted to these types, where it is read: option parsing, config
files, checkpoints, data folders, design and calibration files. Device errors live in
`drivers.errors` because layer 3 must not import the workflows; the CLI handles both.
"""


class OnnlabError(Exception):
    """Base class: something the user can fix (a path, a config value, a calibration)."""


class UsageError(OnnlabError):
    """A command-line option contradicts another or the data; the message names the flag."""


class ConfigError(OnnlabError):
    """A configuration file or option is invalid; the message names file, field and expectation."""


class DataError(OnnlabError):
    """A dataset file is missing or malformed; the message names the file."""


class CheckpointError(OnnlabError):
    """A checkpoint is missing, corrupt or belongs to a different model."""


class CalibrationError(OnnlabError):
    """A calibration fit failed or an artifact does not match the bench; says what to change."""


class CaptureError(OnnlabError):
    """A capture store is corrupt, foreign, or does not match the requested run."""


class Interrupted(OnnlabError):
    """Ctrl-C in a long command; the message says what was kept and how to resume (exit 130)."""
