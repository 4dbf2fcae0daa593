"""User-facing errors.

Anything a user can cause (a wrong path, a malformed dataset, an unknown config key, a checkpoint
that does not match) raises a subclass of `RobopolicyError` whose message is one line saying what
is wrong and where. The CLI prints that line and exits non-zero; library users catch the class.
"""


class RobopolicyError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class DatasetError(RobopolicyError):
    """A dataset is missing, malformed, or inconsistent with its metadata."""


class ConfigError(RobopolicyError):
    """A configuration file or override is invalid."""


class CheckpointError(RobopolicyError):
    """A checkpoint is missing, corrupt, or does not match the policy it is loaded into."""


class EnvError(RobopolicyError):
    """A simulation environment name or option is invalid."""


class SafetyError(RobopolicyError):
    """An action or robot state violated a safety limit during deployment."""


class ObservationError(RobopolicyError):
    """An observation handed to a policy does not match the features it was trained on."""
