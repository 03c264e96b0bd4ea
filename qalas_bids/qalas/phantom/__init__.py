"""The digital brain and head: ground-truth maps, B1 and simulated QALAS magnitudes.

Belongs here: anatomy (MNI152 tissue fractions shipped with nilearn, head layers), tissue
parameters, B1 fields, noise. Arrays and in-memory images only: writing a BIDS dataset
from a phantom is :mod:`qalas_bids.demo`'s job.
"""
