"""qalas_bids.cli"""
