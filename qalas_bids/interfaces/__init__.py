"""qalas_bids.interfaces"""
