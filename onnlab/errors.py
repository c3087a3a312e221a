"""User-facing error types of the onnlab workflows.

The CLI turns every `OnnlabError` (and `ValueError`, which the physics layer raises for
bad parameters) into one line on stderr and exit code 2. Device errors live in
`drivers.errors` because layer 3 must not import the workflows; the CLI handles both.
"""


class OnnlabError(Exception):
    """Base class: something the user can fix (a path, a config value, a calibration)."""


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
