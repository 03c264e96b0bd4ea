"""qalas_bids.bids"""
