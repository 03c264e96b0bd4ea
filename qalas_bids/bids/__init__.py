"""BIDS layer: find QALAS runs and their B1 maps with pybids, check and load the inputs,
write derivatives (names from pybids patterns, atomic float32 NIfTI + JSON sidecars)."""
from .b1_pairing import B1Source
from .derivatives import (
    OutputLocationError,
    bids_uri,
    check_output_dir,
    derivative_path,
    detect_container,
    write_bidsignore,
    write_dataset_description,
    write_derivative,
    write_json,
)
from .discovery import QalasRun, collect_qalas_runs, format_timing, resolve_timing
from .inputs_check import check_qalas_headers, load_qalas_run
from .layout import load_bids_filters, make_layout, validate_bids_filters

__all__ = [
    "B1Source", "OutputLocationError", "QalasRun", "bids_uri", "check_output_dir",
    "check_qalas_headers", "collect_qalas_runs", "derivative_path", "detect_container",
    "format_timing", "load_bids_filters", "load_qalas_run", "make_layout", "resolve_timing",
    "validate_bids_filters", "write_bidsignore", "write_dataset_description",
    "write_derivative", "write_json",
]
