"""The group level: tables, data dictionary and HTML of every participant in the output."""
from __future__ import annotations

import logging

from ..config import Settings
from .errors import EXIT_OK


LOGGER = logging.getLogger("qalas_bids")


def run_group(settings: Settings) -> int:
    from ..reports.group import run_group_level

    written = run_group_level(settings.output_dir, derivatives_dir=settings.derivatives)
    for kind, path in written.items():
        LOGGER.info("group level %s: %s", kind, path)
    return EXIT_OK
