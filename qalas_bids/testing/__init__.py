"""Helpers for the test suite and the documentation screenshots. Not used by the app.

Fake derivatives datasets (:mod:`.fake_derivatives`) let the report, QC-gate and group-level
tests run in milliseconds without a fit. Nothing in ``qalas_bids`` outside this package may
import it (``tests/test_layout.py`` checks).
"""
