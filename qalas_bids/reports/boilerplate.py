"""Methods boilerplate (logs/CITATION.md/.html/.bib) generated from what actually ran.

``settings`` is the app's settings as a dict (keys used, all optional: ``fit_mode``,
``device``, ``epochs``, ``vendor_preset``, ``no_b1``, ``b1_flip_angle``, ``synth_contrasts``,
``synth_null_mode``, ``seed``). ``runs`` holds one dict per processed run: the T1map
sidecar (``FitMode``, ``FitInfo``, ``SequenceTiming``, ``B1Source``, ``Warnings``) plus its
``entities``; :func:`runs_from_derivatives` builds them from an output folder.
"""
from __future__ import annotations

import html
import re
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from ..qalas.b1.no_b1 import no_b1_bias_text

MODE_TEXT = {
    "scan-specific": "trained from scratch on each scan (scan-specific self-supervised training)",
    "pretrained": "applied with pretrained weights (no training on the scan)",
    "fine-tune": "initialised from pretrained weights and fine-tuned on each scan",
    "dictionary": None,
}


def _versions() -> dict[str, str]:
    import bids
    import nibabel
    import nilearn
    import nipype
    import numpy
    import torch

    return {"qalas-bids": __version__, "nipype": nipype.__version__, "pybids": bids.__version__,
            "nibabel": nibabel.__version__, "nilearn": nilearn.__version__, "torch": torch.__version__,
            "numpy": numpy.__version__}


def _unique(values) -> list:
    out = []
    for v in values:
        if v not in (None, "", []) and v not in out:
            out.append(v)
    return out


def _fmt_list(items: Sequence[str]) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def methods_markdown(settings: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    """The methods paragraph (Markdown, citations as ``[@key]``) for these settings and runs."""
    v = _versions()
    infos = [r.get("FitInfo", {}) or {} for r in runs]
    modes = _unique([r.get("FitMode") for r in runs]) or _unique([settings.get("fit_mode")]) or ["scan-specific"]
    devices = _unique([i.get("Device") for i in infos]) or _unique([settings.get("device")]) or ["cpu"]
    epochs = _unique([i.get("Epochs") for i in infos]) or _unique([settings.get("epochs")])
    vendors = _unique([(r.get("SequenceTiming") or {}).get("vendor") for r in runs]) or _unique(
        [settings.get("vendor_preset")])
    n_subjects = len({(r.get("entities") or {}).get("subject") for r in runs}) if runs else 0
    parts = [
        f"Quantitative maps were computed with *qalas-bids* {v['qalas-bids']}, a BIDS App built on "
        f"Nipype {v['nipype']} [@gorgolewski2011nipype], PyBIDS {v['pybids']} [@yarkoni2019pybids], "
        f"NiBabel {v['nibabel']} [@brett2024nibabel], Nilearn {v['nilearn']} [@abraham2014nilearn] and "
        f"PyTorch {v['torch']} [@paszke2019pytorch]"
        + (f", for {n_subjects} participant{'s' if n_subjects != 1 else ''} ({len(runs)} run{'s' if len(runs) != 1 else ''})." if runs else ".")
    ]
    parts.append(
        "The five contrasts of each 3D-QALAS acquisition (3D quantification using an interleaved "
        "Look-Locker acquisition sequence with a T2 preparation pulse) [@kvernby2014qalas; "
        "@fujita2019qalas] were modelled with the closed-form steady-state Bloch model of the "
        "sequence, compared to the magnitude images."
    )
    timing_text = (f"the {_fmt_list(vendors)} timing preset" if vendors else "the default timing preset")
    parts.append(f"Sequence timing followed {timing_text}, with values present in the image sidecars taking "
                 "precedence (see each map's `SequenceTiming` and `TimingSources`).")
    for mode in modes:
        if mode == "dictionary":
            parts.append("T1, T2, proton density (PD) and inversion efficiency (IE) were estimated by "
                         "dictionary matching of the normalised magnitude signals against atoms simulated "
                         "with the same model, PD being the least-squares scale.")
        else:
            ep = f" for {_fmt_list(epochs)} epochs" if epochs and mode != "pretrained" else ""
            parts.append(
                "T1, T2, proton density (PD) and inversion efficiency (IE) were estimated with "
                "SSL-QALAS [@jun2023sslqalas]: a per-voxel neural network whose predicted maps are "
                "passed through the QALAS signal model and compared with the measured images "
                f"(self-supervised loss inside the head mask), {MODE_TEXT.get(mode, mode)}{ep}.")
    parts.append(f"Computations ran on {_fmt_list(devices)}.")
    b1_sources = _unique([str(r.get("B1Source")) for r in runs if r.get("B1Source")])
    if settings.get("no_b1") or (runs and not b1_sources):
        parts.append(f"No B1+ map was used: {no_b1_bias_text()}.")
    else:
        fa = settings.get("b1_flip_angle")
        kinds = _unique([str(r["B1Source"].get("Kind")) for r in runs if isinstance(r.get("B1Source"), dict)])
        method = "; ".join(B1_METHOD_TEXT.get(k, k) for k in kinds) or B1_METHOD_TEXT["tfl"]
        rigid = settings.get("b1_registration", "rigid") == "rigid"
        parts.append(
            f"The B1+ map ({method}" + (f"; nominal flip angle {fa} degrees" if fa else "") + ") was "
            + ("rigidly registered to QALAS through its own magnitude image (SimpleITK, Euler3D, Mattes "
               "mutual information, fixed seed), then " if rigid else "")
            + "resampled into the QALAS grid (world coordinates, linear interpolation), clipped to "
            "[0.65, 1.35] and used as the known relative transmit field of each voxel.")
    floor = ("Before fitting, the Rician noise floor was removed from the magnitudes (sqrt(M^2 - 2 "
             "sigma^2), sigma from the image background). " if settings.get("noise_floor_correction", True)
             else "The magnitudes were fitted without noise-floor correction. ")
    parts.append(floor + "T1 was allowed up to 10 s and T2 up to 5 s. Per-voxel Cramér-Rao lower bounds (noise estimated from the "
                 "background) and the relative residual of the fit are provided as uncertainty maps. "
                 "The brain was separated from scalp, skull and eyes using the fitted PD and T1 maps; "
                 "tissue values ignored voxels at a parameter bound, with a high residual or a high "
                 "relative Cramér-Rao bound.")
    synth = settings.get("synth_contrasts")
    if synth:
        names = synth.split(",") if isinstance(synth, str) else list(synth)
        null_mode = settings.get("synth_null_mode", "subject")
        null_text = ("from each subject's fitted CSF and WM T1" if null_mode == "subject"
                     else "from textbook 3 T T1 values")
        parts.append(f"Synthetic {_fmt_list(names)} images were computed from the maps with spin-echo and "
                     f"inversion-recovery signal equations; null inversion times were derived {null_text}. "
                     "For fluid voxels with an uncertain T1, the synthetic images used values shrunk "
                     "towards the fluid's centre with Cramér-Rao-based empirical-Bayes weights "
                     "(the quantitative maps are unchanged).")
    return "### Methods\n\n" + " ".join(parts) + "\n"


def _bib_entries() -> dict[str, str]:
    text = resources.files("qalas_bids").joinpath("data/boilerplate.bib").read_text(encoding="utf-8")
    entries = {}
    for chunk in re.split(r"\n(?=@)", text.strip()):
        m = re.match(r"@\w+\{([^,]+),", chunk)
        if m:
            entries[m.group(1)] = chunk.strip()
    return entries


def _reference_text(entry: str) -> str:
    def field(name):
        m = re.search(rf"\b{name}\s*=\s*\{{(.*?)\}},?\s*$", entry, re.M)
        return re.sub(r"[{}]", "", m.group(1)) if m else ""

    authors = [a.strip() for a in field("author").split(" and ")]
    first = authors[0].split(",")[0] if authors and authors[0] else ""
    who = f"{first} et al." if len(authors) > 1 else first
    venue = field("journal") or field("booktitle") or field("howpublished")
    doi = field("doi")
    return f"{who} ({field('year') or 'n.d.'}). {field('title')}. *{venue}*" + (
        f" {field('volume')}" if field("volume") else "") + (f", {field('pages')}" if field("pages") else "") + (
        f". doi:{doi}" if doi else ".")


def render_markdown(settings: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
    """(full Markdown with numbered references, cited bib keys in order)."""
    body = methods_markdown(settings, runs)
    keys = []
    for group in re.findall(r"\[(@[^\]]+)\]", body):
        for key in re.findall(r"@([\w-]+)", group):
            if key not in keys:
                keys.append(key)
    numbered = re.sub(r"\[(@[^\]]+)\]",
                      lambda m: "[" + ", ".join(str(keys.index(k) + 1) for k in re.findall(r"@([\w-]+)", m.group(1))) + "]",
                      body)
    bib = _bib_entries()
    refs = "\n".join(f"{i + 1}. {_reference_text(bib[k])}" for i, k in enumerate(keys) if k in bib)
    return numbered + "\n### References\n\n" + refs + "\n", keys


def markdown_to_html(markdown: str) -> str:
    """Minimal converter for the boilerplate's own Markdown (headings, paragraphs, lists)."""
    out, in_list = [], False
    for block in markdown.split("\n"):
        line = html.escape(block)
        line = re.sub(r"\*(.+?)\*", r"<em>\1</em>", line)
        line = re.sub(r"`(.+?)`", r"<code>\1</code>", line)
        m = re.match(r"(\d+)\. (.*)", line)
        if m and not in_list:
            out.append("<ol>")
            in_list = True
        if not m and in_list:
            out.append("</ol>")
            in_list = False
        if m:
            out.append(f"<li>{m.group(2)}</li>")
        elif line.startswith("### "):
            out.append(f"<h3>{line[4:]}</h3>")
        elif line.strip():
            out.append(f"<p>{line}</p>")
    if in_list:
        out.append("</ol>")
    return "\n".join(out)


#: How each B1 map kind gives relative B1 (boilerplate wording).
B1_METHOD_TEXT = {
    "tfl": "Siemens TurboFLASH: flip-angle map divided by ten times the nominal flip angle",
    "rfm": "Siemens rf_map: (famp - 2048) 180 / 2048 divided by the nominal flip angle",
    "afi": "actual flip-angle imaging, Yarnykh 2007: arccos((r n - 1)/(n - r)) with r = S2/S1, "
           "n = TR2/TR1, divided by the nominal flip angle",
    "dam": "double angle: arccos(S(2a) / (2 S(a))) / a",
    "tb1map": "a precomputed relative B1+ map",
}


def runs_from_derivatives(output_dir: str | Path) -> list[dict[str, Any]]:
    """Run dicts (T1map sidecar + ``entities``) of every run found in ``output_dir``."""
    from .collect import find_runs

    return [{**r.sidecar, "entities": r.entities, "B1Source": r.sidecar.get("B1Source") or (
        str(r.b1) if r.b1 else None)} for r in find_runs(output_dir)]


def write_citation_files(output_dir: str | Path, settings: Mapping[str, Any],
                         runs: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """Write ``logs/CITATION.md``, ``.html`` and ``.bib``; return ``{"md", "html", "bib"}`` paths."""
    from ..bids.derivatives import atomic_write_text

    logs = Path(output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    markdown, keys = render_markdown(settings, runs)
    bib = _bib_entries()
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>qalas-bids methods"
            "</title></head><body>\n" + markdown_to_html(markdown) + "\n</body></html>\n")
    return {
        "md": atomic_write_text(logs / "CITATION.md", markdown),
        "html": atomic_write_text(logs / "CITATION.html", page),
        "bib": atomic_write_text(logs / "CITATION.bib", "\n\n".join(bib[k] for k in keys if k in bib) + "\n"),
    }
