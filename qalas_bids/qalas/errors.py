"""Exceptions of the physics/fitting core."""


class QalasInputError(ValueError):
    """Input data that cannot be fitted (NaNs, wrong shapes, impossible values).

    The message must say what is wrong and what the user can do about it; the CLI turns
    it into exit code 2 without a traceback.
    """


class DeviceError(RuntimeError):
    """The requested compute device is not available."""
