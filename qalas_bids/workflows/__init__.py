"""qalas_bids.workflows"""
