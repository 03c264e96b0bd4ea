"""``qalas-bids`` entry point: parse -> settings -> dispatch to :mod:`qalas_bids.execution`.

Exit status: 0 success, 1 processing failure (crash files listed), 2 usage/input error
(one message, no traceback), 3 failed post-fit QC, 130 interrupted. The raw dataset is only
read; outputs are written atomically and never deleted.
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from ..config import Settings
from ..execution.errors import EXIT_INTERRUPTED, EXIT_USAGE, user_errors
from ..execution.group import run_group
from ..execution.nipype_run import INTERRUPTED_MESSAGE
from ..execution.participant import run_participant
from .parser import parse_args

LOGGER = logging.getLogger("qalas_bids")


def setup_logging(verbose: int, quiet: bool = False) -> None:
    """Timestamped log lines on stderr; ``-v`` nipype info, ``-vv`` debug, ``-q`` warnings only."""
    level = logging.DEBUG if verbose >= 2 else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s | %(levelname)-7s | %(name)s: %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
    logging.getLogger("qalas_bids").setLevel(level)
    for noisy in ("bids", "matplotlib", "PIL", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Library warnings (matplotlib/nilearn figure code, ...) are not the user's business:
    # logged with -v, silent otherwise. qalas-bids' own warnings go through its logger.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``qalas-bids`` (returns and exits with the status code)."""
    opts = parse_args(argv)  # argparse exits 2 on usage errors
    settings = Settings.from_namespace(opts)
    setup_logging(settings.verbose, settings.quiet)
    from ..utils.environment import check_writable, prepare_environment

    try:
        check_writable(settings.work_dir)
        check_writable(settings.output_dir)  # read-only, or an existing file: exit 2 now
        prepare_environment(settings.work_dir, settings.omp_nthreads)
        errors = user_errors()
    except PermissionError as exc:
        print(f"qalas-bids: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if settings.notrack:
        LOGGER.debug("--notrack: nothing to disable, qalas-bids never sends usage data")
    LOGGER.info("qalas-bids %s (%s level), run %s", settings.version, settings.analysis_level,
                settings.run_uuid)
    try:
        if settings.analysis_level == "group":
            status = run_group(settings)
        else:
            status = run_participant(settings)
    except errors as exc:
        print(f"qalas-bids: error: {exc}", file=sys.stderr)
        status = EXIT_USAGE
    except KeyboardInterrupt:
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        status = EXIT_INTERRUPTED
    sys.exit(status)


if __name__ == "__main__":
    main()
