"""Exit codes and the errors that are the user's to fix (exit 2, one line, no traceback)."""
from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A user/input problem found after parsing (exit 2, message only)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the input or the command line is wrong" (exit 2)."""
    from ..qalas.errors import DeviceError, QalasInputError
    from ..qalas.physics.timing import TimingError

    errors: list[type[BaseException]] = [UsageError, QalasInputError, DeviceError, TimingError,
                                         PermissionError]
    try:
        from ..bids.derivatives import OutputLocationError
        errors.append(OutputLocationError)
    except ImportError:
        pass
    return tuple(errors)
