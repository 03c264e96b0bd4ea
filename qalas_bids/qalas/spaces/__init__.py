"""Geometry between grids: resampling in world coordinates and registration.

Belongs here: the arithmetic of moving an array from one grid to another (QALAS, B1 map,
T1w, template), field-of-view masks, rigid/affine/nonlinear registration and the
transforms it produces. Must not: find templates or transforms on disk or name
transform files (``qalas_bids.bids`` does), or build nipype nodes.
"""
