"""Typed errors. Library code raises these; only the CLI turns them into messages and exit codes."""


class DeployKitError(Exception):
    """Base class of every error deploykit raises on purpose."""

    exit_code = 2


class ConfigError(DeployKitError, ValueError):
    """An invalid model argument or configuration value."""


class UnknownModelError(DeployKitError, ValueError):
    """A model name that is not registered."""


class InputError(DeployKitError, ValueError):
    """Validation inputs that cannot be built: a missing or empty image directory, an unreadable image."""


class ComparisonError(DeployKitError, ValueError):
    """Two sets of outputs that cannot be compared: different shapes, names or empty arrays."""
