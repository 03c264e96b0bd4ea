"""Helpers for the test suite and the documentation screenshots. Not used by the app.

Fake derivatives datasets (:mod:`.fake_derivatives`) let the report, QC-gate and group-level
tests run in milliseconds without a fit; the stress corpus (:mod:`.stress_corpus`) makes
randomised valid and implausible QALAS + B1 datasets for the plausibility gates. Nothing in ``qalas_bids`` outside this package may
import it (``tests/test_layout.py`` checks).
"""
