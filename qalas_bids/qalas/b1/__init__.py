"""B1+ (transmit field) maps: relative B1 from each map kind, onto the QALAS grid, checked.

Belongs here: the arithmetic that turns a B1 map's images into relative B1 (``kinds``),
its preparation for the fit (resampling, clipping, masking, coverage and plausibility
gates: ``prepare``), and analyses of what B1 does to the fit (``identifiability``).
Must not: find or read B1 files or sidecars (``qalas_bids.bids`` does, and passes arrays).
"""
