"""The built-in demo: a BIDS dataset written from the digital phantom (``qalas-bids-demo-data``).

BIDS layer: names, sidecars as scanners write them, ``dataset_description.json`` and the
ground-truth derivatives. The phantom itself (arrays) lives in :mod:`qalas_bids.qalas.phantom`.
"""
