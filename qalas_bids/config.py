"""Settings of one qalas-bids invocation: one frozen dataclass, no global state.

Built once from the parsed command line (:meth:`Settings.from_namespace`), passed
explicitly to the ``init_*_wf`` builders, and written next to the outputs as provenance
(``<output_dir>/logs/config-<run_uuid>.json``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from . import __version__
from .qalas.b1.coregister import DEFAULT_REGISTRATION
from .qalas.b1.prepare import DEFAULT_MIN_COVERAGE


def new_run_uuid() -> str:
    """fMRIPrep-style run identifier: ``YYYYmmdd-HHMMSS_<uuid4>``."""
    return f"{datetime.now():%Y%m%d-%H%M%S}_{uuid.uuid4()}"


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know (paths absolute; times in seconds; memory in GB)."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str = "participant"
    work_dir: Path = Path("work").resolve()
    participant_labels: tuple[str, ...] | None = None
    session_labels: tuple[str, ...] | None = None
    bids_filters: dict[str, Any] | None = None
    derivatives: Path | None = None  # group level: the (first) --derivatives folder
    derivative_sources: dict[str, Path] | None = None  # --derivatives NAME=PATH (participant)
    output_spaces: tuple[str, ...] = ("qalas",)  # --output-spaces references (fMRIPrep grammar)
    atlases: tuple[str, ...] = ()  # --atlases items, checked (bids.atlases.AtlasRequest as text)
    skip_bids_validation: bool = False
    # fitting
    fit_mode: str = "scan-specific"
    device: str = "auto"
    resolved_device: str | None = None  # set after the device check (e.g. "cpu", "cuda:0")
    no_b1: bool = False
    b1_flip_angle: float | None = None
    b1_min_coverage: float = DEFAULT_MIN_COVERAGE
    relaxed_gates: tuple[str, ...] = ()  # --relax-gate: refusals of these gates become warnings
    afi_tr_ratio: float | None = None
    b1_registration: str = DEFAULT_REGISTRATION
    noise_floor_correction: bool = True
    vendor_preset: str | None = None
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    model_path: Path | None = None
    force_model: bool = False
    pretrained_fallback: bool = False
    save_model_dir: Path | None = None
    # synthetic contrasts
    synth_contrasts: tuple[str, ...] | None = None
    synth_params: dict[str, Any] | None = None
    # execution
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    plugin: str = "MultiProc"
    plugin_args: dict[str, Any] = field(default_factory=dict)
    stop_on_first_crash: bool = False
    reports_only: bool = False
    boilerplate_only: bool = False
    notrack: bool = False
    verbose: int = 0
    quiet: bool = False
    accept_qc_failures: bool = False
    run_uuid: str = field(default_factory=new_run_uuid)
    version: str = __version__

    @classmethod
    def from_namespace(cls, opts: Any) -> "Settings":
        """Build from the ``argparse`` namespace of :func:`qalas_bids.cli.parser.parse_args`."""
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        nprocs = opts.nprocs or cpus or 1
        plugin_cfg = opts.plugin_file or {}
        plugin = plugin_cfg.get("plugin", "MultiProc" if nprocs > 1 else "Linear")
        plugin_args = dict(plugin_cfg.get("plugin_args") or {})
        if plugin == "MultiProc":
            plugin_args.setdefault("maxtasksperchild", 1)
            plugin_args.setdefault("raise_insufficient", False)
            if opts.nprocs or "n_procs" not in plugin_args:
                plugin_args["n_procs"] = nprocs
            if opts.mem_gb:
                plugin_args["memory_gb"] = opts.mem_gb
        elif plugin == "SLURMGraph" and not plugin_args:
            plugin_args["dont_resubmit_completed_jobs"] = True  # nipype 1.11 crashes on {}
        return cls(
            bids_dir=Path(opts.bids_dir),
            output_dir=Path(opts.output_dir),
            analysis_level=opts.analysis_level,
            work_dir=Path(opts.work_dir),
            participant_labels=tuple(dict.fromkeys(opts.participant_label)) if opts.participant_label else None,
            session_labels=tuple(dict.fromkeys(opts.session_label)) if opts.session_label else None,
            bids_filters=opts.bids_filters,
            derivatives=next(iter(dict(opts.derivatives or {}).values()), None),
            derivative_sources=dict(opts.derivatives) if opts.derivatives else None,
            output_spaces=tuple(str(s) for s in getattr(opts, "output_spaces_parsed", None) or ()) or ("qalas",),
            atlases=tuple(str(a) for a in getattr(opts, "atlases_parsed", None) or ()),
            skip_bids_validation=opts.skip_bids_validation,
            fit_mode=opts.fit_mode,
            device=opts.device,
            no_b1=opts.no_b1,
            b1_flip_angle=opts.b1_flip_angle,
            b1_min_coverage=getattr(opts, "b1_min_coverage", DEFAULT_MIN_COVERAGE),
            relaxed_gates=tuple(dict.fromkeys(getattr(opts, "relax_gate", None) or ())),
            afi_tr_ratio=getattr(opts, "afi_tr_ratio", None),
            b1_registration=getattr(opts, "b1_registration", DEFAULT_REGISTRATION),
            noise_floor_correction=not getattr(opts, "no_noise_floor_correction", False),
            vendor_preset=opts.vendor_preset,
            seed=opts.seed,
            epochs=opts.epochs,
            batch_size=opts.batch_size,
            model_path=Path(opts.model).absolute() if getattr(opts, "model", None) else None,
            force_model=bool(getattr(opts, "force_model", False)),
            pretrained_fallback=bool(getattr(opts, "pretrained_fallback", False)),
            save_model_dir=Path(opts.save_model).absolute() if getattr(opts, "save_model", None) else None,
            synth_contrasts=(tuple(dict.fromkeys(n for group in opts.synth_contrasts for n in group))
                             if opts.synth_contrasts else None),
            synth_params=opts.synth_params,
            nprocs=nprocs,
            omp_nthreads=opts.omp_nthreads or min(8, nprocs),
            mem_gb=opts.mem_gb,
            plugin=plugin,
            plugin_args=plugin_args,
            stop_on_first_crash=opts.stop_on_first_crash,
            reports_only=opts.reports_only,
            boilerplate_only=opts.boilerplate_only,
            notrack=opts.notrack,
            verbose=opts.verbose,
            quiet=bool(getattr(opts, "quiet", False)),
            accept_qc_failures=bool(getattr(opts, "accept_qc_failures", False)),
        )

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def ssl_options(self) -> dict[str, Any]:
        """Expert SSL options passed to ``fit_volume`` (only those the user set)."""
        options = {k: v for k, v in (("epochs", self.epochs), ("batch_size", self.batch_size)) if v is not None}
        if self.pretrained_fallback and self.fit_mode == "pretrained":
            options["pretrained_fallback"] = True
        return options

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (paths as strings)."""

        def convert(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, (tuple, list)):
                return [convert(v) for v in value]
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            return value

        return {f.name: convert(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def write_json(self, directory: Path | None = None) -> Path:
        """Write ``config-<run_uuid>.json`` (default under ``<output_dir>/logs``)."""
        directory = Path(directory or self.output_dir / "logs")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"config-{self.run_uuid}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path
