"""Estimation of T1, T2, PD and IE from the five QALAS magnitudes.

Belongs here: the SSL-QALAS network, its training (scan-specific, pretrained, fine-tune,
cohort models) and refinement, dictionary matching, the Cramer-Rao bounds and residuals,
the whole-volume fit (:mod:`.fit_volume`), input checks that need a fit (readout order),
compute devices and progress lines. Must not: read NIfTI files, name derivatives or use
nipype (the interface in ``qalas_bids.interfaces.fit`` calls :func:`.fit_volume.fit_volume`).
"""
