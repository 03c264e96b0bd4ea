"""Command-line parser of qalas-bids (BIDS App conventions, fMRIPrep habits).

Importing this module is cheap (no nipype/torch), so ``--help`` and ``--version`` are fast.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..bids.derivatives import output_location_problem
from ..qalas.b1.coregister import DEFAULT_REGISTRATION, REGISTRATION_MODES
from ..qalas.b1.no_b1 import no_b1_bias_text
from ..qalas.b1.prepare import DEFAULT_MIN_COVERAGE
from ..qalas.gates import RELAXABLE_GATES
from ..qalas.fitting.fit_volume import METHODS as FIT_MODES
from . import validators as v

VENDOR_PRESETS = ("siemens", "ge", "philips")
SYNTHETIC_CONTRASTS = ("T1w", "T2w", "PDw", "FLAIR", "DIR", "PSIR", "STIR")

_DESCRIPTION = f"""\
qalas-bids {__version__}: quantitative T1, T2, PD and inversion-efficiency (IE) maps, their
uncertainty and synthetic contrasts from 3D-QALAS with a TurboFLASH B1+ map (SSL-QALAS).
Input: a BIDS dataset; output: a BIDS derivatives dataset with an HTML report per subject.
"""

_EPILOG = """\
exit status: 0 success, 1 processing failure (crash files are listed), 2 usage or input
error. qalas-bids never downloads anything and never phones home. Intermediate results are
kept in the work directory (default ./work): re-running the same command reuses them.
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: X)`` only where the help text does not already state the default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``qalas-bids`` argument parser (options grouped as in fMRIPrep)."""
    parser = argparse.ArgumentParser(
        prog="qalas-bids",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("bids_dir", type=v.existing_dir,
                        help="root of the input BIDS dataset (never modified; may be read-only)")
    parser.add_argument("output_dir", type=v.output_path,
                        help="derivatives folder to write (created): outside bids_dir, or "
                             "bids_dir/derivatives/<name> as BIDS suggests; never bids_dir "
                             "itself or another folder of the raw data")
    parser.add_argument("analysis_level", choices=("participant", "group"),
                        help="'participant' fits each subject; 'group' summarises existing derivatives")
    parser.add_argument("--version", action="version", version=f"qalas-bids {__version__}")

    g = parser.add_argument_group("Selecting the data")
    g.add_argument("--participant-label", "--participant_label", dest="participant_label",
                   nargs="+", type=v.bids_label("sub"), metavar="LABEL",
                   help="participants to process, with or without 'sub-' (default: all)")
    g.add_argument("--session-label", dest="session_label", nargs="+", type=v.bids_label("ses"),
                   metavar="LABEL", help="sessions to process, with or without 'ses-' (default: all)")
    g.add_argument("--bids-filter-file", dest="bids_filters", type=v.bids_filter_file,
                   metavar="FILE",
                   help='JSON of pybids entities narrowing the queries, fMRIPrep format, e.g. '
                        '{"qalas": {"session": "01", "run": 1}, "b1": {"acquisition": "famp"}, '
                        '"t1w": {"acquisition": "mprage"}} (t1w: the T1w of --output-spaces)')
    g.add_argument("--skip-bids-validation", action="store_true",
                   help="do not run bids-validator-deno (it runs offline when on PATH)")
    g.add_argument("--derivatives", type=v.derivatives_spec, nargs="+", metavar="NAME=PATH",
                   help="sMRIPrep/fMRIPrep anatomical derivatives to reuse (fMRIPrep >= 23.2 syntax; "
                        "a bare PATH is named after its folder). Participant level: their "
                        "desc-preproc_T1w, desc-brain_mask and from-T1w_to-<template> transforms are "
                        "used, so only the rigid QALAS -> T1w step is computed. Group level: the "
                        "desc-brain_mask/dseg (same subject/session) defines the tissue classes, "
                        "resampled to QALAS space by the affines; default: tissue classes from the "
                        "fitted T1 map")

    g = parser.add_argument_group("Output spaces")
    g.add_argument("--output-spaces", nargs="*", metavar="SPACE[:MOD-VAL]",
                   help="spaces to write the maps, uncertainty, residual, masks and synthetic contrasts "
                        "in, fMRIPrep grammar: qalas (the QALAS grid; always written, default), T1w "
                        "(the session's anat/*_T1w or the --derivatives desc-preproc_T1w) and "
                        "TemplateFlow templates with res-<index>/cohort-<label> modifiers, e.g. "
                        "MNI152NLin2009cAsym:res-2. MNI152NLin2009cAsym is shipped; other templates "
                        "must be pre-fetched into $TEMPLATEFLOW_HOME (nothing is downloaded)")
    g.add_argument("--atlases", nargs="+", metavar="ATLAS",
                   help="atlases for the ROI tables (one TSV per atlas and output space, besides the "
                        "shipped TissueHemi on MNI152NLin2009cAsym and the --derivatives "
                        "desc-aseg/desc-aparcaseg_dseg in T1w space): NAME[:desc-DESC], a TemplateFlow "
                        "atlas of a template in --output-spaces (e.g. HOCPA:desc-th25, "
                        "Schaefer2018:desc-400Parcels7Networks; pre-fetched into $TEMPLATEFLOW_HOME), "
                        "or LABEL=DSEG.nii.gz[,LABELS.tsv], your own integer segmentation on a "
                        "template's grid (its template from tpl-<T>/space-<T> in the file name, or "
                        "the one template of --output-spaces)")

    g = parser.add_argument_group("Fitting")
    g.add_argument("--fit-mode", choices=FIT_MODES, default="scan-specific",
                   help="scan-specific trains SSL-QALAS on this scan; pretrained applies shipped "
                        "weights; fine-tune starts from them; dictionary is the classic matching")
    g.add_argument("--device", type=v.device_spec, default="auto",
                   help="auto, cpu, cuda or cuda:N; auto falls back to the CPU with an info line")
    g.add_argument("--no-b1", action="store_true",
                   help="fit without a B1+ map (B1 = 1), explicit opt-in only: the maps are then "
                        + no_b1_bias_text().replace("%", "%%"))
    g.add_argument("--b1-flip-angle", type=v.flip_angle_deg, metavar="DEG",
                   help="nominal flip angle of the B1 map (default: FlipAngle of its sidecar: "
                        "TB1TFL/TB1RFM famp, TB1AFI tr1, TB1DAM flip-1, the smaller angle); "
                        "TurboFLASH relative B1 = famp / (10 * angle)")
    g.add_argument("--afi-tr-ratio", type=v.positive_float, metavar="N",
                   help="AFI TR2/TR1 (default: from the TB1AFI sidecars' RepetitionTimeExcitation)")
    g.add_argument("--b1-registration", choices=REGISTRATION_MODES, default=DEFAULT_REGISTRATION,
                   help="place the B1 map on the QALAS grid by its header geometry only, or by a "
                        "rigid registration (mutual information, deterministic) of its own magnitude "
                        "image to QALAS, which corrects head motion between the two scans "
                        f"(default: {DEFAULT_REGISTRATION}; see docs/b1.md)")
    g.add_argument("--b1-min-coverage", type=v.fraction, metavar="FRACTION", default=DEFAULT_MIN_COVERAGE,
                   help="smallest fraction of the head the B1 map must cover; B1 = 1 is assumed "
                        "outside it (0 accepts any coverage)")
    g.add_argument("--relax-gate", dest="relax_gate", action="append", choices=RELAXABLE_GATES,
                   metavar="GATE", default=[],
                   help="turn the refusal of one plausibility gate into a warning recorded in every "
                        "sidecar (repeatable; the refusal message names its gate): "
                        + ", ".join(RELAXABLE_GATES) + " (docs/gates.md)")
    g.add_argument("--vendor-preset", choices=VENDOR_PRESETS,
                   help="QALAS timing preset to use instead of the sidecar's Manufacturer")
    g.add_argument("--seed", type=v.non_negative_int, default=0,
                   help="random seed of the network training (reproducible results)")
    g.add_argument("--no-noise-floor-correction", action="store_true",
                   help="fit the magnitudes as they are. By default the Rician noise floor is "
                        "removed first (sqrt(M^2 - 2 sigma^2), sigma from the image background), "
                        "which removes an upward bias of long (CSF) T1s; turn it off for images "
                        "whose background is not Rayleigh noise (e.g. denoised or multi-coil "
                        "sum-of-squares data with a non-central chi background)")

    g = parser.add_argument_group("SSL training (expert)")
    g.add_argument("--epochs", type=v.positive_int, metavar="N",
                   help="training epochs (default: the engine's choice for --fit-mode)")
    g.add_argument("--batch-size", type=v.positive_int, metavar="N",
                   help="voxels per mini-batch (default: the engine's choice)")

    g = parser.add_argument_group("Models (reuse across subjects)")
    g.add_argument("--model", type=v.existing_file, metavar="PATH",
                   help="network weights (a --save-model or qalas-bids-train file) for --fit-mode "
                        "pretrained or fine-tune instead of the shipped ones; refused when its "
                        "timing, vendor or field strength differ from the scan's")
    g.add_argument("--force-model", action="store_true",
                   help="use a --model trained for another timing/vendor/field anyway (a warning "
                        "is written into every sidecar)")
    g.add_argument("--pretrained-fallback", action="store_true",
                   help="with --fit-mode pretrained: when the scan's timing is outside the ranges "
                        "the model was trained for, fine-tune it on this scan (recorded in the "
                        "sidecars) instead of stopping with exit 2")
    g.add_argument("--save-model", type=v.output_path, metavar="DIR",
                   help="write each run's trained network (scan-specific or fine-tune) to DIR as "
                        "sub-X[_ses-Y][_run-Z]_desc-ssl_model.pt, reusable with --model")

    g = parser.add_argument_group("Synthetic contrasts")
    g.add_argument("--synth-contrasts", nargs="+", type=v.name_list(SYNTHETIC_CONTRASTS), metavar="NAME",
                   help=f"contrasts to synthesise (space- or comma-separated, e.g. T1w,FLAIR), "
                        f"among {', '.join(SYNTHETIC_CONTRASTS)} (default: all)")
    g.add_argument("--synth-params", type=v.json_file, metavar="FILE",
                   help='JSON overriding TR/TE/TI (seconds) per contrast, e.g. '
                        '{"T1w": {"RepetitionTime": 0.6}}')

    g = parser.add_argument_group("Performance and execution")
    g.add_argument("-w", "--work-dir", type=v.output_path, default=Path("work"),
                   help="work directory for intermediate results (reused on re-runs; local disk "
                        "recommended; default ./work)")
    g.add_argument("--nprocs", "--n-cpus", dest="nprocs", type=v.positive_int,
                   help="processes run in parallel (default: all CPUs)")
    g.add_argument("--omp-nthreads", type=v.positive_int,
                   help="threads per process for torch/numpy (default: min(8, nprocs))")
    g.add_argument("--mem", "--mem-gb", dest="mem_gb", type=v.memory_gb, metavar="MEM",
                   help="memory limit for the scheduler, e.g. 16G or 16000M (default: all RAM)")
    g.add_argument("--use-plugin", dest="plugin_file", type=v.plugin_file, metavar="FILE",
                   help="nipype plugin YAML with 'plugin' and 'plugin_args' "
                        "(e.g. plugin: SLURMGraph); --nprocs overrides n_procs")
    g.add_argument("--accept-qc-failures", action="store_true",
                   help="exit 0 even when a run's maps fail the post-fit QC gate (WM T1 outside "
                        "0.3-3 s or median residual > 15%%); the failure stays in sidecars and report")
    g.add_argument("--stop-on-first-crash", action="store_true",
                   help="stop at the first failing node instead of running the independent ones")
    g.add_argument("--reports-only", action="store_true",
                   help="only (re)write the HTML reports from existing derivatives")
    g.add_argument("--boilerplate-only", action="store_true",
                   help="only write the methods boilerplate (logs/CITATION.*)")
    g.add_argument("--notrack", action="store_true",
                   help="accepted for compatibility; qalas-bids never sends usage data anyway")
    g.add_argument("-v", "--verbose", dest="verbose", action="count", default=0,
                   help="more log output (-v info from nipype, -vv debug)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines and no stage-timing table; warnings and errors only")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check arguments (problems exit with status 2, like argparse)."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    bids_dir, output_dir = opts.bids_dir, opts.output_dir
    location_problem = output_location_problem(output_dir, bids_dir)
    if location_problem:
        parser.error(location_problem)
    work_dir = opts.work_dir
    if work_dir == bids_dir or bids_dir in work_dir.parents:
        parser.error(f"work dir {work_dir} is inside bids_dir {bids_dir}: the input dataset is "
                     "never written to; pass -w /somewhere/else")
    if not (bids_dir / "dataset_description.json").is_file():
        parser.error(f"{bids_dir} does not look like a BIDS dataset (no dataset_description.json)")
    if opts.no_b1 and (opts.b1_flip_angle is not None or opts.b1_min_coverage != DEFAULT_MIN_COVERAGE
                       or opts.afi_tr_ratio is not None):
        parser.error("--b1-flip-angle, --afi-tr-ratio and --b1-min-coverage make no sense with --no-b1")
    if opts.no_b1 and opts.b1_flip_angle is not None:
        parser.error("--b1-flip-angle makes no sense with --no-b1")
    if opts.reports_only and opts.boilerplate_only:
        parser.error("choose one of --reports-only and --boilerplate-only")
    if opts.model is not None and opts.fit_mode not in ("pretrained", "fine-tune"):
        parser.error("--model is used by --fit-mode pretrained or fine-tune only")
    if opts.force_model and opts.model is None:
        parser.error("--force-model needs --model")
    if opts.pretrained_fallback and opts.fit_mode != "pretrained":
        parser.error("--pretrained-fallback is for --fit-mode pretrained")
    if opts.save_model is not None:
        if opts.analysis_level != "participant":
            parser.error("--save-model is a participant-level option")
        if opts.fit_mode not in ("scan-specific", "fine-tune"):
            parser.error("--save-model needs a training fit mode (scan-specific or fine-tune)")
        if opts.save_model == bids_dir or bids_dir in opts.save_model.parents:
            parser.error(f"--save-model {opts.save_model} is inside bids_dir: choose another folder")
    if opts.synth_params is not None or opts.synth_contrasts:
        from ..qalas.errors import QalasInputError
        from ..qalas.tissue.synthetic import resolve_params

        names = [n for group in opts.synth_contrasts for n in group] if opts.synth_contrasts else None
        try:  # checked now, not after the whole fit
            resolve_params(names, opts.synth_params)
        except QalasInputError as exc:
            parser.error(str(exc))
    if opts.quiet and opts.verbose:
        parser.error("choose one of -q/--quiet and -v/--verbose")
    opts.output_spaces_parsed = None
    if opts.output_spaces:
        from ..bids.output_spaces import parse_output_spaces
        from ..qalas.errors import QalasInputError

        try:  # unknown spaces, cohorts or resolutions: exit 2 before any work
            opts.output_spaces_parsed = parse_output_spaces(opts.output_spaces)
        except QalasInputError as exc:
            parser.error(f"--output-spaces: {exc}")
        if opts.analysis_level != "participant":
            parser.error("--output-spaces is a participant-level option")
    opts.atlases_parsed = ()
    if opts.atlases:
        from ..bids.atlases import check_atlases, parse_atlas
        from ..qalas.errors import QalasInputError

        try:  # unknown atlases, unreadable files, templates not requested: exit 2 before any work
            opts.atlases_parsed = tuple(check_atlases([parse_atlas(t) for t in opts.atlases],
                                                      opts.output_spaces_parsed or ()))
        except QalasInputError as exc:
            parser.error(f"--atlases: {exc}")
    if opts.derivatives and len({name for name, _ in opts.derivatives}) != len(opts.derivatives):
        parser.error("--derivatives: each NAME must be unique")
    return opts
