"""Physics and fitting core of qalas-bids (pure numpy/torch: no BIDS, no nipype)."""
