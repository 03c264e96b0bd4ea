"""Participant QC report: ``<out>/sub-<l>.html`` with PNG figures in ``<out>/sub-<l>/figures/``.

Everything is read back from the derivatives on disk (so ``--reports-only`` works). The HTML
is self-contained apart from the figures, which are files referenced by relative paths
(``sub-<l>/figures/...``, like fMRIPrep). Missing pieces (no B1, no synthetic images, no
loss history, ...) produce a sentence saying so, never an error.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import logging
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np

from .. import __version__
from ..bids.derivatives import atomic_write_text, derivative_path
from ..qalas.b1.no_b1 import no_b1_bias_text
from ..qalas.errors import QalasInputError
from ..qalas.tissue.classes import LABELS
from ..utils.nifti_io import read_image
from . import figures
from .collect import MAP_SUFFIXES, RunDerivatives, find_runs, read_sidecar
from .targets import registration_target, report_links
from .summaries import MAP_UNITS, TISSUES, LoadedRun, load_run, tissue_table

LOGGER = logging.getLogger("qalas_bids.reports")


def render_page(title: str, nav: Sequence[tuple[str, str]], body: str) -> str:
    """Fill the shared HTML template (``qalas_bids/data/reports/report.html``)."""
    template = Template(resources.files("qalas_bids").joinpath("data/reports/report.html").read_text("utf-8"))
    return template.substitute(
        title=html.escape(title), version=__version__, date=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        nav=" ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in nav), body=body)


def _e(x: Any) -> str:
    return html.escape(str(x))


def _img(out_dir: Path, path: Path, alt: str) -> str:
    return f'<img src="{_e(path.relative_to(out_dir).as_posix())}" alt="{_e(alt)}" loading="lazy">'


def _figure_path(out_dir: Path, run: RunDerivatives, desc: str, suffix: str) -> Path:
    return out_dir / derivative_path(run.entities, suffix, desc=desc, datatype="figures", extension=".png")


def _background(loaded: LoadedRun, bids_dir: Path | None) -> nib.Nifti1Image:
    """Last QALAS contrast from the raw data (via ``Sources``) when reachable, else the PD map."""
    if bids_dir is not None:
        sources = [str(u).split(":", 2)[-1] for u in loaded.run.sidecar.get("Sources", []) or []]
        candidates = sorted(bids_dir / r for r in sources if "QALAS" in r and (bids_dir / r).is_file())
        if candidates:
            img = read_image(candidates[-1])
            if img.ndim == 4:
                img = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32)[..., -1], img.affine)
            return img
    pd = loaded.maps.get("PDmap", loaded.maps["T1map"])
    return nib.Nifti1Image(pd.astype(np.float32), loaded.reference.affine)


def _raw_b1(run: RunDerivatives, bids_dir: Path | None) -> nib.Nifti1Image | None:
    if bids_dir is None or run.b1 is None:
        return None
    for uri in read_sidecar(run.b1).get("Sources", []) or []:
        rel = str(uri).split(":", 2)[-1]
        if ("famp" in rel or "TB1map" in rel) and (bids_dir / rel).is_file():
            return read_image(bids_dir / rel)
    return None


def _raw_b1_magnitude(run: RunDerivatives, bids_dir: Path | None) -> nib.Nifti1Image | None:
    """The B1 map's own magnitude image (TFL/RFM anat, AFI tr1, DAM flip-1) from the raw data."""
    if bids_dir is None or run.b1 is None:
        return None
    files = ((read_sidecar(run.b1).get("B1Source") or {}).get("Files") or {})
    for role in ("anat", "tr1", "flip1"):
        if role in files:
            path = bids_dir / str(files[role]).split(":", 2)[-1]
            return read_image(path) if path.is_file() else None
    return None


def _tissue_html(loaded: LoadedRun) -> str:
    table = tissue_table(loaded)
    head = "".join(f"<th>{k[:-3]} median [IQR] ({MAP_UNITS[k]})</th>" for k in MAP_SUFFIXES if k in loaded.maps)
    rows = []
    for tissue in TISSUES:
        cells = []
        for k in MAP_SUFFIXES:
            if k in loaded.maps:
                st = table[tissue][k]
                cells.append(f"<td>{st['median']:.3f} [{st['iqr']:.3f}]</td>" if st["n"] else "<td>n/a</td>")
        n = table[tissue]["T1map"]["n"]
        rows.append(f"<tr><th class='l'>{tissue}</th><td>{n}</td>{''.join(cells)}</tr>")
    return (f"<table><tr><th class='l'>tissue</th><th>voxels</th>{head}</tr>{''.join(rows)}</table>"
            f"<p class='note'>{_e(loaded.tissue_source)}</p>")


def _fit_flags_html(out_dir: Path, loaded: LoadedRun, background: nib.Nifti1Image,
                    batch: figures.FigureBatch) -> str:
    """Overlay of voxels at a parameter bound / with a high residual, and the per-class table."""
    from ..qalas.physics.bounds import at_bound
    from ..qalas.tissue.classes import RESIDUAL_MAX

    run, maps = loaded.run, loaded.maps
    if "T1map" not in maps or "T2map" not in maps:
        return ""
    head = loaded.head_mask if loaded.head_mask is not None else loaded.mask
    flags = at_bound(maps["T1map"], maps["T2map"], maps.get("IEmap"))["any"].astype(np.uint8)
    if loaded.residual is not None:
        flags = flags + 2 * (loaded.residual > RESIDUAL_MAX).astype(np.uint8)
    flags = np.where(head, flags, 0)
    fig = batch.add(figures.fit_flags, _figure_path(out_dir, run, "fitflags", "mask"), background,
                    nib.Nifti1Image(flags.astype(np.float32), loaded.reference.affine),
                    nib.Nifti1Image(head.astype(np.uint8), loaded.reference.affine))
    classes = ((run.sidecar.get("ParameterBounds") or {}).get("Classes")) or {}
    table = ""
    if classes:
        head_row = "<tr><th class='l'>class</th><th>voxels</th><th>T1</th><th>T2</th><th>IE (0.5)</th></tr>"
        rows = "".join(f"<tr><th class='l'>{_e(name)}</th><td>{row.get('Voxels', 0)}</td>"
                       + "".join(f"<td>{100 * row.get(k, 0):.1f} %</td>" for k in ("T1", "T2", "IE")) + "</tr>"
                       for name, row in classes.items())
        table = f"<table>{head_row}{rows}</table>"
    reliability = run.sidecar.get("TissueReliability") or {}
    counts = ", ".join(f"{k} {v}" for k, v in reliability.items() if k != "Description")
    return ("<h3>Fit flags</h3>" + _img(out_dir, fig, "voxels at a bound or with a high residual")
            + "<p class='note'>Yellow: a parameter at the fit range (qalas_bids.qalas.physics.bounds); magenta: relative "
              f"residual above {RESIDUAL_MAX:g} (eyes, vessels, skull noise); red: both. Fraction of each "
              "class at a bound:</p>" + table
            + (f"<p class='note'>Brain voxels for tissue values: {_e(counts)}.</p>" if counts else ""))


def _kv_table(data: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th class='l'>{_e(k)}</th><td class='l'>{_e(v)}</td></tr>" for k, v in data.items())
    return f"<table>{rows}</table>"


def _number(value: object, digits: int = 4) -> str:
    """Short display of a float (``n/a`` when missing)."""
    return "n/a" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _b1_text(b1: object) -> str:
    """One readable line for the ``B1Source`` sidecar entry."""
    if not isinstance(b1, dict):
        return str(b1) if b1 else ""
    files = ", ".join(str(f).rsplit("/", 1)[-1] for f in (b1.get("Files") or {}).values())
    return f"{b1.get('Kind', '')}: {b1.get('Reason') or files}"  # the reason names the files


def _run_section(out_dir: Path, loaded: LoadedRun, bids_dir: Path | None, extra_warnings: Sequence[str],
                 batch: figures.FigureBatch) -> str:
    """HTML of one run; its figures are queued on ``batch`` (the caller draws them)."""
    run = loaded.run
    ras = lambda a: figures.canonical_data(nib.Nifti1Image(a.astype(np.float32), loaded.reference.affine))  # noqa: E731
    mask_ras = ras(loaded.mask.astype(np.float32)) > 0
    parts = [f"<h2 id='{_e(run.label)}'>{_e(run.label)}</h2>"]
    parts += _summary_html(loaded, extra_warnings)
    rows = []
    for k in MAP_SUFFIXES:
        if k in loaded.maps:
            data = ras(loaded.maps[k])
            cmap, lo, hi = figures.display_range(k, data, mask_ras)
            rows.append((k[:-3], data, cmap, lo, hi, MAP_UNITS[k]))
    fig = batch.add(figures.mosaic, _figure_path(out_dir, run, "maps", "T1map"), rows, mask_ras)
    parts.append("<h3 id='maps-" + _e(run.label) + "'>Quantitative maps</h3>" + _img(out_dir, fig, "T1, T2, PD, IE maps"))
    parts += _mask_and_b1_html(out_dir, loaded, bids_dir, batch)
    parts += _registrations_html(out_dir, run, bids_dir, batch)
    parts.append(_uncertainty_html(out_dir, loaded, batch, ras, mask_ras))
    fig = batch.add(figures.tissue_histograms, _figure_path(out_dir, run, "histograms", "T1map"), loaded.maps,
                    loaded.labels, LABELS)
    parts.append("<h3>Tissue values</h3>" + _tissue_html(loaded) + _img(out_dir, fig, "T1/T2 histograms"))
    parts.append(_synthetic_html(out_dir, run, batch, mask_ras))
    parts += _fit_log_html(out_dir, loaded, batch)
    return "\n".join(parts)


def _summary_html(loaded: LoadedRun, extra_warnings: Sequence[str]) -> list[str]:
    """Summary table (fit mode, device, B1 source, model...) and the warnings."""
    run, side = loaded.run, loaded.run.sidecar
    parts = []
    info = side.get("FitInfo", {}) or {}
    summary = {"Fit mode": side.get("FitMode", "n/a"), "Algorithm": side.get("EstimationAlgorithm", "n/a"),
               "Device": info.get("Device", "n/a"), "Wall time (s)": _number(info.get("WallTimeSeconds")),
               "Epochs": info.get("Epochs", "n/a"), "Noise sigma": _number(info.get("NoiseSigma")),
               "Noise sigma method": info.get("NoiseSigmaMethod", "n/a"),
               "B1 source": _b1_text(side.get("B1Source")) or ("none (B1 = 1 assumed)" if run.b1 is None
                                                               else run.b1.name),
               "Software version": side.get("SoftwareVersion", "n/a")}
    if info.get("Model"):
        model = info["Model"]
        summary["Model"] = (f"{model.get('Role', '')} {model.get('Path') or ''} "
                            f"{('sha256 ' + model['SHA256'][:12]) if model.get('SHA256') else ''}").strip()
    parts.append("<h3>Summary</h3>" + _kv_table(summary))
    warns = list(side.get("Warnings", []) or []) + list(extra_warnings)
    parts.append("<h3>Warnings</h3>" + ("".join(f"<div class='warn'>{_e(w)}</div>" for w in warns)
                                        if warns else "<p class='note'>No warnings were raised.</p>"))
    return parts


def _mask_and_b1_html(out_dir: Path, loaded: LoadedRun, bids_dir: Path | None,
                      batch: figures.FigureBatch) -> list[str]:
    """Mask outlines, fit flags and the B1 registration check."""
    run, side = loaded.run, loaded.run.sidecar
    parts = []
    background = _background(loaded, bids_dir)
    if run.mask is not None:
        head = read_image(run.head_mask) if run.head_mask is not None else None
        fig = batch.add(figures.mask_outline, _figure_path(out_dir, run, "brainmask", "mask"), background,
                        read_image(run.mask), head)
        volumes = side.get("BrainMask") or {}
        note = (f"Brain {volumes['BrainVolumeMl']} ml, head {volumes['HeadVolumeMl']} ml. "
                if "BrainVolumeMl" in volumes else "")
        parts.append("<h3>Masks</h3>" + _img(out_dir, fig, "mask outlines")
                     + f"<p class='note'>{note}Red: brain mask (tissue values, synthetic nulls). Blue: head "
                       "mask (the fitted voxels, scalp, skull and eyes included).</p>")
        parts.append(_fit_flags_html(out_dir, loaded, background, batch))
    else:
        parts.append("<h3>Mask</h3><p class='note'>No brain mask was found in the derivatives.</p>")
    if run.b1 is not None:
        raw = _raw_b1(run, bids_dir)
        fig = batch.add(figures.b1_registration, _figure_path(out_dir, run, "b1reg", "TB1map"), background,
                        read_image(run.b1), raw)
        note = "" if raw is not None else ("<p class='note'>Raw B1 map not reachable (pass the BIDS directory) "
                                           "- only the resampled map is shown.</p>")
        parts.append("<h3>B1+ map (registration check)</h3>" + _img(out_dir, fig, "B1 over QALAS") + note)
        registration = (read_sidecar(run.b1).get("B1Summary") or {}).get("Registration") or {}
        magnitude = _raw_b1_magnitude(run, bids_dir)
        if registration.get("MatrixQALASToB1RAS") and magnitude is not None:
            fig = batch.add(figures.b1_motion_overlay, _figure_path(out_dir, run, "b1motion", "TB1map"), background,
                            magnitude, registration["MatrixQALASToB1RAS"])
            parts.append(f"<h3>B1+ map coregistration (moved {registration.get('MotionMM', 0):.1f} mm, "
                         f"{registration.get('RotationDegrees', 0):.1f} deg)</h3>"
                         + _img(out_dir, fig, "B1 magnitude outline before and after registration"))
    else:
        parts.append(f"<h3>B1+ map</h3><div class='warn'>No B1+ map was used: {_e(no_b1_bias_text())}</div>")
    return parts


def _registrations_html(out_dir: Path, run: RunDerivatives, bids_dir: Path | None,
                        batch: figures.FigureBatch) -> list[str]:
    """One overlay per ``--output-spaces`` space: the target's edges on the resampled image."""
    if not run.spaces:
        return []
    links = report_links(out_dir, bids_dir)
    parts = ["<h3 id='spaces-" + _e(run.label) + "'>Output spaces (registration check)</h3>"]
    for space in run.spaces.values():
        moving = space.synthetic_t1w or space.t1map
        target = registration_target(space, links)
        title = f"<h4>{_e(space.label)}: {_e(target.name)}</h4>"
        if moving is None or space.mask is None or target.path is None:
            missing = target.reason or "the resampled T1 map or brain mask of this space was not found"
            parts.append(title + f"<p class='note'>No overlay: {_e(missing)}.</p>")
            continue
        fig = batch.add(figures.registration_overlay,
                        out_dir / derivative_path(run.entities, "T1w" if space.synthetic_t1w else "T1map",
                                                  desc="registration", space=space.space, res=space.res,
                                                  cohort=space.cohort, datatype="figures", extension=".png"),
                        read_image(moving), read_image(target.path), read_image(space.mask))
        parts.append(title + _img(out_dir, fig, f"registration to {space.label}")
                     + f"<p class='note'>{_e(_registration_caption(out_dir, space, moving))}</p>")
    return parts


def _registration_caption(out_dir: Path, space, moving: Path) -> str:
    """What the overlay shows and how the transform was obtained (from the sidecars)."""
    image = "synthetic T1w" if "desc-synthetic" in moving.name else "T1 map"
    text = (f"Background: the {image} resampled into {space.label}. Red: edges of the registration "
            "target; they should follow the background's tissue boundaries.")
    for uri in read_sidecar(moving).get("Transforms", []) or []:
        xfm = read_sidecar(out_dir / str(uri).removeprefix("bids::"))
        reg = xfm.get("Registration") or {}
        text += f" Transform {str(uri).rsplit('/', 1)[-1]}: {xfm.get('Description', 'no sidecar')}"
        if reg.get("Seconds") is not None:
            metric = f", final metric {_number(reg['Metric'])}" if reg.get("Metric") is not None else ""
            text += f" ({reg['Seconds']} s{metric})"
        text += "."
    return text


def _uncertainty_html(out_dir: Path, loaded: LoadedRun, batch: figures.FigureBatch, ras, mask_ras) -> str:
    """Residual and CRLB mosaic."""
    run = loaded.run
    rows = []
    if loaded.residual is not None:
        data = ras(loaded.residual)
        rows.append(("relative residual", data, "inferno", 0.0, max(float(np.percentile(data[mask_ras], 99)), 1e-6), "1"))
    for k in MAP_SUFFIXES:
        if k in loaded.crlb:
            data = ras(loaded.crlb[k])
            hi = float(np.percentile(data[mask_ras], 95)) if mask_ras.any() else 1.0
            rows.append((f"CRLB {k[:-3]}", data, "inferno", 0.0, max(hi, 1e-9), MAP_UNITS[k]))
    if rows:
        fig = batch.add(figures.mosaic, _figure_path(out_dir, run, "uncertainty", "T1map"), rows, mask_ras)
        return "<h3>Residual and uncertainty (CRLB standard deviation)</h3>" + _img(out_dir, fig, "residual and CRLB")
    return "<h3>Residual and uncertainty</h3><p class='note'>No residual or CRLB maps were written.</p>"


def _synthetic_html(out_dir: Path, run: RunDerivatives, batch: figures.FigureBatch, mask_ras) -> str:
    """Synthetic contrast mosaic and their TR/TE/TI table."""
    if run.synthetic:
        rows, captions = [], []
        for name, path in run.synthetic.items():
            data = figures.canonical_data(read_image(path))
            meta = read_sidecar(path)
            signed = name == "PSIR"
            hi = float(np.percentile(np.abs(data[mask_ras]), 99)) if mask_ras.any() else 1.0
            rows.append((name, data, "gray", -hi if signed else 0.0, max(hi, 1e-6), "a.u."))
            captions.append({"contrast": name, "TR (s)": meta.get("RepetitionTime"), "TE (s)": meta.get("EchoTime"),
                             "TI (s)": meta.get("InversionTime", "-"), "equation": meta.get("Equation", "n/a")})
        fig = batch.add(figures.mosaic, _figure_path(out_dir, run, "synthetic", "T1w"), rows, mask_ras, n_slices=5)
        head = "".join(f"<th class='l'>{_e(k)}</th>" for k in captions[0])
        body = "".join("<tr>" + "".join(f"<td class='l'>{_e(v)}</td>" for v in c.values()) + "</tr>" for c in captions)
        return ("<h3>Synthetic contrasts</h3>" + _img(out_dir, fig, "synthetic contrasts")
                + f"<table><tr>{head}</tr>{body}</table>")
    return "<h3>Synthetic contrasts</h3><p class='note'>No synthetic images were written for this run.</p>"


def _fit_log_html(out_dir: Path, loaded: LoadedRun, batch: figures.FigureBatch) -> list[str]:
    """Training loss curve and the sequence timing table."""
    run, side = loaded.run, loaded.run.sidecar
    info = side.get("FitInfo", {}) or {}
    parts = []
    loss = info.get("LossHistory") or []
    if len(loss) > 1:
        fig = batch.add(figures.loss_curve, _figure_path(out_dir, run, "fitlog", "T1map"), loss)
        parts.append("<h3>Fit log</h3>" + _img(out_dir, fig, "training loss"))
    else:
        parts.append("<h3>Fit log</h3><p class='note'>No loss history (e.g. dictionary matching or pretrained "
                     "weights applied without training).</p>")
    timing = side.get("SequenceTiming") or {}
    sources = side.get("TimingSources") or {}
    if timing:
        rows = "".join(f"<tr><th class='l'>{_e(k)}</th><td>{_e(v)}</td><td class='l'>{_e(sources.get(k, ''))}</td></tr>"
                       for k, v in timing.items())
        parts.append(f"<h3>Sequence timing (s; flip angle in degrees)</h3><table><tr><th class='l'>parameter</th>"
                     f"<th>value</th><th class='l'>source</th></tr>{rows}</table>")
    else:
        parts.append("<h3>Sequence timing</h3><p class='note'>The T1map sidecar records no timing.</p>")
    return parts


def _methods_html(out_dir: Path) -> str:
    citation = out_dir / "logs" / "CITATION.html"
    if citation.is_file():
        text = citation.read_text("utf-8")
        start, end = text.find("<body>"), text.rfind("</body>")
        return text[start + 6:end] if start >= 0 and end > start else text
    from .boilerplate import markdown_to_html, render_markdown, runs_from_derivatives

    return markdown_to_html(render_markdown({}, runs_from_derivatives(out_dir))[0])


def _crash_files(out_dir: Path, subject: str, run_uuid: str | None = None) -> str:
    """Crash files of the invocation ``run_uuid`` (all invocations when ``None``)."""
    crashes = sorted((out_dir / f"sub-{subject}" / "log").glob(f"{run_uuid or '*'}/crash*.txt"))
    if not crashes:
        return "<p class='note'>No crash files" + (" in this run." if run_uuid else ".") + "</p>"
    return "".join(f"<h4>{_e(c.name)}</h4><pre>{_e(c.read_text(errors='replace')[-5000:])}</pre>" for c in crashes)


def make_participant_report(output_dir: str | Path, subject_label: str, *, bids_dir: str | Path | None = None,
                            derivatives_dir: str | Path | None = None,
                            warnings: Sequence[str] = (), run_uuid: str | None = None,
                            loaded_runs: Mapping[str, LoadedRun] | None = None, layout: Any = None,
                            workers: int = 1) -> Path:
    """Write ``<output_dir>/sub-<label>.html`` (+ figures) from the derivatives on disk.

    ``bids_dir`` (optional) lets the report show the raw QALAS image and raw B1 map;
    ``warnings`` are extra messages (e.g. from the workflow log) listed with the sidecar ones;
    ``run_uuid`` limits the crash files shown to those of that invocation; ``loaded_runs``
    (label -> :class:`LoadedRun`, e.g. from the QC gate) are used instead of reading those
    runs' maps again (their sidecars are still read from disk); ``layout`` is a pybids layout
    of ``output_dir`` to reuse; ``workers`` processes draw the figures
    (:class:`~.figures.FigureBatch`).
    """
    out_dir = Path(output_dir).absolute()
    subject = subject_label.removeprefix("sub-")
    bids_dir = Path(bids_dir).absolute() if bids_dir else None
    runs = find_runs(out_dir, subject, layout=layout)
    if not runs:
        raise QalasInputError(f"no T1 map of sub-{subject} in {out_dir}: nothing to report "
                              "(did the participant level finish?).")
    sections, nav = [], []
    batch = figures.FigureBatch(workers)
    for run in runs:
        reuse = (loaded_runs or {}).get(run.label) if derivatives_dir is None else None
        loaded = dataclasses.replace(reuse, run=run) if reuse is not None else load_run(run, derivatives_dir)
        sections.append(_run_section(out_dir, loaded, bids_dir, warnings, batch))
        batch.draw()  # this run's figures, before the next run's maps are loaded
        nav.append((run.label, run.label))
    sections.append("<h2 id='methods'>Methods</h2>" + _methods_html(out_dir))
    sections.append("<h2 id='errors'>Errors</h2>" + _crash_files(out_dir, subject, run_uuid))
    nav += [("methods", "Methods"), ("errors", "Errors")]
    page = render_page(f"qalas-bids report: sub-{subject}", nav, "\n".join(sections))
    return atomic_write_text(out_dir / f"sub-{subject}.html", page)
