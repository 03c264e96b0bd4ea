"""qalas_bids.reports"""
