"""The physics and fitting core of qalas-bids: arrays in, arrays out.

Pure numpy/scipy/torch (nibabel/nilearn only for in-memory images and resampling). The
core knows nothing of BIDS, nipype, file names or sidecars: it never imports pybids,
nipype, templateflow or any other ``qalas_bids`` layer (``bids``, ``utils``,
``interfaces``, ``workflows``, ``execution``, ``reports``, ``cli``, ``demo``,
``testing``); files are read and written by the layers above, which pass arrays in.
``tests/test_layout.py`` enforces this.

Rooms (one job each):

``physics/``  the QALAS sequence: timing, Bloch signal model, parameter bounds
``b1/``       B1+ maps: relative B1 from each map kind, preparation on the QALAS grid, checks
``fitting/``  estimation: SSL-QALAS network and training, dictionary matching, CRLB, the
              volume fit, devices and progress
``tissue/``   what is done with fitted maps: head/brain masks, tissue classes and
              summaries, synthetic contrasts, repeatability statistics
``spaces/``   resampling and registration between grids (QALAS, B1, T1w, templates)
``phantom/``  the digital brain/head with exact ground truth (arrays only, no BIDS)
``errors``    the exceptions every room raises (user input problems -> CLI exit 2)
"""
