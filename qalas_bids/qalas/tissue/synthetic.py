"""Synthetic contrast-weighted images from quantitative T1, T2, PD (and IE) maps.

All times in seconds. Longitudinal magnetisation is assumed fully saturated by each
readout (90° excitation), so a sequence is a chain of free recoveries and inversions.

Equations (``E(t) = exp(-t/T1)``, ``IE`` = inversion efficiency, 1 for a perfect pulse):

- ``spin-echo`` (T1w, T2w, PDw): ``S = PD·(1 − E(TR))·exp(−TE/T2)``
- ``inversion-recovery`` (FLAIR, STIR: magnitude; PSIR: signed):
  ``S = PD·[1 − (1+IE)·E(TI) + IE·E(TR)]·exp(−TE/T2)``;
  with IE = 1 this is the textbook ``1 − 2·E(TI) + E(TR)``.
- ``double-inversion-recovery`` (DIR, magnitude), inversions at ``TI1`` and ``TI2``
  before the readout (scanner convention, ``TI1 > TI2``):
  ``S = PD·[1 − (1+IE)·E(TI2) + IE(1+IE)·E(TI1) − IE²·E(TR)]·exp(−TE/T2)``;
  with IE = 1 this is ``1 − 2·E(TI2) + 2·E(TI1) − E(TR)`` (the shared physics notes write
  ``TI1`` for the inversion spacing, i.e. ``E(TI1+TI2)`` there is ``E(TI1)`` here).

IE-aware mode (default when an IE map is given) uses the voxel's fitted IE; otherwise
IE = 1. Null inversion times solve ``Mz(T1_null) = 0`` with the same equation, using
T1 (and IE) of this subject's CSF/WM (``null_mode="subject"``: in the eroded tissue class
of :mod:`qalas_bids.qalas.tissue.classes` inside the brain mask, without the voxels that
:func:`~qalas_bids.qalas.tissue.classes.reliable_voxels` rejects, the density mode of T1 for WM
and for noise-free maps, the censored median for noisy CSF; IE is the median over the used
voxels within 5 % of that T1) or textbook 3 T constants (``null_mode="constant"``: CSF
4.2 s, WM 0.85 s, fat 0.38 s). Noisy fluid voxels are synthesised from shrunk values
(:mod:`qalas_bids.qalas.tissue.fluid_shrinkage`).

Images are multiplied by one common factor ``1000 / p99(PD in mask)`` (recorded as
``IntensityScale``) so that they fit comfortably in an integer range.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import numpy as np
from scipy import optimize

from ..errors import QalasInputError
from .classes import CSF_T1_THRESHOLD, classify_tissues, core_mask, reliable_voxels, robust_tissue_value

CONTRASTS = ("T1w", "T2w", "PDw", "FLAIR", "DIR", "PSIR", "STIR")
#: Textbook 3 T T1 (s) used for nulling when null_mode="constant" (fat always: no fat in brain).
TEXTBOOK_T1 = {"CSF": 4.2, "WM": 0.85, "fat": 0.38}
NULL_MODES = ("subject", "constant")
#: Relative T1 CRLB above which a fluid voxel counts as noisy (median null, fluid shrinkage).
NOISY_REL_CRLB = 0.05
#: Target value of the 99th percentile of PD inside the mask after scaling.
TARGET_SCALE = 1000.0

EQUATIONS = {
    "spin-echo": "S = PD*(1 - exp(-TR/T1))*exp(-TE/T2)",
    "inversion-recovery": "S = PD*|1 - (1+IE)*exp(-TI/T1) + IE*exp(-TR/T1)|*exp(-TE/T2)",
    "phase-sensitive-inversion-recovery": "S = PD*(1 - (1+IE)*exp(-TI/T1) + IE*exp(-TR/T1))*exp(-TE/T2)",
    "double-inversion-recovery": (
        "S = PD*|1 - (1+IE)*exp(-TI2/T1) + IE*(1+IE)*exp(-TI1/T1) - IE^2*exp(-TR/T1)|*exp(-TE/T2)"
    ),
}

#: Presets (seconds). InversionTime "auto" = computed null; nulled tissues listed.
PRESETS: dict[str, dict[str, Any]] = {
    "T1w": {"Equation": "spin-echo", "RepetitionTime": 0.65, "EchoTime": 0.01},
    "T2w": {"Equation": "spin-echo", "RepetitionTime": 5.0, "EchoTime": 0.1},
    "PDw": {"Equation": "spin-echo", "RepetitionTime": 5.0, "EchoTime": 0.01},
    "FLAIR": {"Equation": "inversion-recovery", "RepetitionTime": 9.0, "EchoTime": 0.1,
              "InversionTime": "auto", "Nulled": ["CSF"]},
    "DIR": {"Equation": "double-inversion-recovery", "RepetitionTime": 11.0, "EchoTime": 0.1,
            "InversionTime": "auto", "Nulled": ["CSF", "WM"]},
    # TI between the WM and GM nulls at 3 T: WM positive, GM and CSF negative.
    "PSIR": {"Equation": "phase-sensitive-inversion-recovery", "RepetitionTime": 5.0,
             "EchoTime": 0.01, "InversionTime": 0.8},
    "STIR": {"Equation": "inversion-recovery", "RepetitionTime": 5.0, "EchoTime": 0.05,
             "InversionTime": "auto", "Nulled": ["fat"]},
}
_USER_KEYS = {"RepetitionTime", "EchoTime", "InversionTime"}


def spin_echo(t1, t2, pd, tr: float, te: float) -> np.ndarray:
    """Spin-echo signal ``PD·(1 − exp(−TR/T1))·exp(−TE/T2)`` (times in s)."""
    return pd * (1.0 - _decay(tr, t1)) * _decay(te, t2)


def inversion_recovery_mz(t1, tr: float, inversion_times: list[float] | tuple[float, ...], ie=1.0):
    """Signed longitudinal magnetisation (fraction of PD) at the readout.

    ``inversion_times`` are measured from each inversion pulse to the readout, in
    decreasing order (``[TI]`` or ``[TI1, TI2]``); Mz is 0 right after each readout.
    """
    tis = [float(t) for t in inversion_times]
    if any(b >= a for a, b in zip(tis, tis[1:])) or tis[0] >= tr or tis[-1] <= 0:
        raise QalasInputError(
            f"inversion times {tis} s must decrease, be > 0 and be shorter than TR = {tr} s."
        )
    mz = 1.0 - _decay(tr - tis[0], t1)  # recovery from saturation to the first inversion
    for i, ti in enumerate(tis):
        next_ti = tis[i + 1] if i + 1 < len(tis) else 0.0
        mz = -ie * mz
        e = _decay(ti - next_ti, t1)
        mz = 1.0 - e + mz * e
    return mz


def null_inversion_times(
    tr: float, null_t1: list[float], null_ie: list[float] | None = None
) -> list[float]:
    """Inversion times (s, scanner convention) that null Mz for each T1 in ``null_t1``.

    One T1 -> ``[TI]`` (closed form ``T1·ln((1+IE)/(1+IE·exp(−TR/T1)))``); two T1s (DIR:
    [longer, shorter] e.g. CSF, WM) -> ``[TI1, TI2]`` solved numerically.
    """
    ies = list(null_ie) if null_ie is not None else [1.0] * len(null_t1)
    if len(null_t1) == 1:
        t1, ie = float(null_t1[0]), float(ies[0])
        return [t1 * math.log((1.0 + ie) / (1.0 + ie * math.exp(-tr / t1)))]
    if len(null_t1) != 2:
        raise ValueError("null_inversion_times supports one or two nulled T1 values")

    def residual(x):
        ti1 = x[1] + x[0]  # x = (spacing between inversions, TI2)
        return [float(inversion_recovery_mz(t, tr, [ti1, x[1]], ie)) for t, ie in zip(null_t1, ies)]

    # Start from the textbook DIR at 3 T: TI2 ≈ 0.3·T1_short·..., spacing ≈ 0.6·T1_long,
    # kept strictly inside the bounds (implausible T1s, e.g. a few ms, would start outside).
    lo, hi = 1e-3, tr
    x0 = [min(max(0.6 * max(null_t1), 2 * lo), 0.9 * hi), min(max(0.45 * min(null_t1), 2 * lo), 0.9 * hi)]
    try:
        sol = optimize.least_squares(residual, x0, bounds=([lo, lo], [hi, hi]), xtol=1e-12, ftol=1e-12)
    except ValueError as exc:  # scipy's own complaint: report ours, with the fix
        raise QalasInputError(
            f"no double-inversion times null T1 = {null_t1} s with TR = {tr} s ({exc}); "
            "set InversionTime for DIR explicitly in --synth-params.") from None
    if not sol.success or max(abs(r) for r in sol.fun) > 1e-6 or sol.x.sum() >= tr:
        raise QalasInputError(
            f"no double-inversion times null T1 = {null_t1} s with TR = {tr} s; "
            "set InversionTime for DIR explicitly in --synth-params."
        )
    return [float(sol.x[0] + sol.x[1]), float(sol.x[1])]


def _decay(t, tau):
    tau = np.asarray(tau, dtype=np.float64)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        out = np.exp(-np.divide(t, tau, out=np.full(np.shape(tau), np.inf), where=tau > 0))
    return out


def resolve_params(contrasts: list[str] | None, params: Mapping[str, Any] | None) -> dict[str, dict]:
    """Presets updated by user values (``{"FLAIR": {"InversionTime": 2.4}, ...}``), validated."""
    names = list(CONTRASTS) if contrasts is None else [str(c).strip() for c in contrasts if str(c).strip()]
    unknown = [c for c in names if c not in PRESETS]
    if unknown:
        raise QalasInputError(
            f"unknown synthetic contrast(s) {unknown}; choose among {', '.join(CONTRASTS)}."
        )
    params = dict(params or {})
    stray = [k for k in params if k not in PRESETS]
    if stray:
        raise QalasInputError(
            f"--synth-params names unknown contrast(s) {stray}; valid keys: {', '.join(CONTRASTS)}."
        )
    resolved = {}
    for name in names:
        spec = copy.deepcopy(PRESETS[name])
        user = params.get(name) or {}
        if not isinstance(user, Mapping):
            raise QalasInputError(f"--synth-params entry for {name} must be an object, got {user!r}.")
        bad = set(user) - _USER_KEYS
        if bad:
            raise QalasInputError(
                f"--synth-params {name}: unknown key(s) {sorted(bad)}; allowed {sorted(_USER_KEYS)} (seconds)."
            )
        if "InversionTime" in user and "InversionTime" not in spec:
            raise QalasInputError(f"--synth-params {name}: a spin-echo contrast has no InversionTime.")
        spec.update(user)
        for key in ("RepetitionTime", "EchoTime"):
            value = spec[key]
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0 or value > 30:
                raise QalasInputError(f"--synth-params {name}: {key} must be in (0, 30] seconds, got {value!r}.")
        if spec["EchoTime"] >= spec["RepetitionTime"]:
            raise QalasInputError(f"--synth-params {name}: EchoTime must be shorter than RepetitionTime.")
        ti = spec.get("InversionTime")
        if ti is not None and ti != "auto":
            tis = ti if isinstance(ti, (list, tuple)) else [ti]
            need = 2 if name == "DIR" else 1
            if len(tis) != need or not all(isinstance(t, (int, float)) and t > 0 for t in tis):
                raise QalasInputError(
                    f"--synth-params {name}: InversionTime must be {'[TI1, TI2]' if need == 2 else 'one number'} "
                    f"in seconds (or \"auto\"), got {ti!r}."
                )
            if sum(tis) >= spec["RepetitionTime"]:
                raise QalasInputError(
                    f"--synth-params {name}: InversionTime {ti!r} must end before RepetitionTime "
                    f"({spec['RepetitionTime']} s).")
            spec["InversionTime"] = [float(t) for t in tis]
        resolved[name] = spec
    return resolved


def estimate_null_tissues(
    t1: np.ndarray, mask: np.ndarray, ie: np.ndarray | None = None, null_mode: str = "subject",
    reliable: np.ndarray | None = None, exclusions: dict[str, int] | None = None,
    censored_high: np.ndarray | None = None, csf_estimator: str = "median",
) -> dict[str, dict[str, Any]]:
    """T1 (s) and IE of CSF, WM and fat to null, with where each value came from.

    ``mask`` is the brain mask; ``reliable`` (default: all of it) the voxels that may give
    tissue values (:func:`.tissue.reliable_voxels`, whose counts are ``exclusions``, and
    whose ``censored_high`` voxels count as long-T1 values in the CSF median).
    CSF uses the median of its eroded class, WM the density mode
    (:func:`.tissue.robust_tissue_value` says why).
    """
    if null_mode not in NULL_MODES:
        raise QalasInputError(f"null_mode must be one of {NULL_MODES}, got {null_mode!r}.")
    out = {name: {"T1": t1v, "IE": None, "Source": "textbook 3 T constant"} for name, t1v in TEXTBOOK_T1.items()}
    out["fat"]["Source"] = "textbook 3 T constant (no fat class inside the brain mask)"
    if null_mode == "constant":
        return out
    reliable = np.asarray(mask, dtype=bool) if reliable is None else reliable
    classes = classify_tissues(t1, mask)
    for name, estimator in (("CSF", csf_estimator), ("WM", "mode")):
        tissue = classes.mask(name)
        value = robust_tissue_value(t1, tissue, reliable, estimator=estimator, censored_high=censored_high)
        if value is None:
            out[name]["Source"] = f"textbook 3 T constant (no {name} voxels found in the fitted T1 map)"
            continue
        used = core_mask(tissue) & reliable
        censored = int((core_mask(tissue) & censored_high).sum()) if censored_high is not None and \
            estimator == "median" else 0
        out[name].update(
            T1=value, Estimator=estimator, VoxelsInClass=int(tissue.sum()), VoxelsUsed=int(used.sum()),
            VoxelsCensoredHigh=censored,
            Source=(f"{estimator} of T1 in the eroded {name} class; voxels at a parameter bound, with a "
                    "high residual or a high relative CRLB excluded"
                    + (" (well-fitted ones with an uninformative long T1 counted as censored above the "
                       "median)" if estimator == "median" else "") + f" ({classes.description})"))
        if exclusions:
            out[name]["ExcludedInBrain"] = {k: v for k, v in exclusions.items() if k not in ("Voxels", "Used")}
        if ie is not None:
            near = used & (np.abs(t1 - value) <= 0.05 * value)
            if near.any():
                out[name]["IE"] = float(np.median(ie[near]))
    return out


def synthesize_all(
    t1: np.ndarray,
    t2: np.ndarray,
    pd: np.ndarray,
    ie: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    contrasts: list[str] | None = None,
    params: Mapping[str, Any] | None = None,
    null_mode: str = "subject",
    ie_aware: bool = True,
    brain_mask: np.ndarray | None = None,
    crlb: Mapping[str, np.ndarray] | None = None,
    residual: np.ndarray | None = None,
    fluid_shrinkage: bool = True,
) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """Synthetic images ``{name: (float32 image, metadata)}`` for the requested contrasts.

    ``t1``/``t2`` in seconds, ``pd`` arbitrary units, ``ie`` unitless (optional). Output is 0
    outside ``mask`` (default ``t1 > 0 & pd > 0``; the head mask in the app). Tissue values
    for the nulls come from ``brain_mask`` (default ``mask``) minus the voxels that
    :func:`.tissue.reliable_voxels` rejects with the CRLB SD maps ``crlb`` (keys ``t1``,
    ``t2``, ``ie``) and ``residual``. With ``fluid_shrinkage`` (and CRLB maps) the noisy
    fluid voxels (T1 > 2.5 s) are synthesised from :func:`.fluid_shrinkage.shrink_fluid`
    values. Metadata: RepetitionTime, EchoTime, InversionTime (s; DIR ``[TI1, TI2]``),
    Equation, EquationFormula, IEAware, NullMode, NullTissues (T1/IE/Source/voxel counts
    of each nulled tissue), FluidShrinkage, IntensityScale, Units.
    """
    t1, t2, pd, ie, mask = _checked_maps(t1, t2, pd, ie, mask)
    specs = resolve_params(contrasts, params)
    use_ie = bool(ie_aware and ie is not None)
    ie_vox = np.clip(ie, 0.0, 1.0) if use_ie else 1.0
    pd_ref = float(np.percentile(pd[mask], 99))
    if pd_ref <= 0:
        raise QalasInputError("synthetic contrasts: PD is zero everywhere inside the mask.")
    scale = TARGET_SCALE / pd_ref
    brain = mask if brain_mask is None else np.asarray(brain_mask, dtype=bool) & mask
    crlb = dict(crlb or {})
    crlb_t1 = crlb.get("t1")
    reliable, censored, exclusions = reliable_voxels(brain, t1, t2, ie, crlb_t1, residual)
    # Noisy fluid (relative T1 CRLB > NOISY_REL_CRLB): median for the null, shrinkage for synthesis.
    # Without CRLB maps (e.g. ground-truth maps) fluid is taken as noise-free: mode, no shrinkage.
    noisy = None if crlb_t1 is None else np.asarray(crlb_t1) > NOISY_REL_CRLB * np.maximum(t1, 1e-9)
    fluid_class = brain & (t1 > CSF_T1_THRESHOLD)
    csf_noisy = noisy is not None and fluid_class.any() and float(np.mean(noisy[fluid_class])) > 0.5
    needs_null = any(s.get("InversionTime") == "auto" for s in specs.values())
    tissues = estimate_null_tissues(t1, brain, ie if use_ie else None, null_mode, reliable,
                                    exclusions, censored, "median" if csf_noisy else "mode") if needs_null else {}
    shrink_note: Any = "off" if noisy is not None else "off (no CRLB map: maps taken as noise-free)"
    if fluid_shrinkage and noisy is not None:
        t1, t2, ie, shrink_note = _shrunk_fluid(t1, t2, ie, mask, brain, fluid_class, noisy, reliable,
                                                crlb, residual, tissues)
        ie_vox = np.clip(ie, 0.0, 1.0) if use_ie else 1.0

    # The images are computed on the voxels inside the mask only (vectors), then scattered.
    inside = mask & (t1 > 0)
    t1_v, t2_v, pd_v = t1[inside], t2[inside], pd[inside]
    ie_v = ie_vox[inside] if isinstance(ie_vox, np.ndarray) else ie_vox
    results = {}
    for name, spec in specs.items():
        values, meta = _contrast(spec, t1_v, t2_v, pd_v, ie_v, tissues, use_ie, null_mode, scale, shrink_note)
        image = np.zeros(t1.shape, dtype=np.float32)
        image[inside] = np.nan_to_num(values * scale)
        results[name] = (image, meta)
    return results


def _checked_maps(t1, t2, pd, ie, mask):
    """float64 maps and the boolean mask (default ``t1 > 0 & pd > 0``), checked for shape
    and NaN/Inf inside the mask (:class:`QalasInputError`)."""
    t1, t2, pd = (np.asarray(a, dtype=np.float64) for a in (t1, t2, pd))
    if not (t1.shape == t2.shape == pd.shape):
        raise QalasInputError(f"T1/T2/PD maps differ in shape: {t1.shape}, {t2.shape}, {pd.shape}.")
    if ie is not None:
        ie = np.asarray(ie, dtype=np.float64)
        if ie.shape != t1.shape:
            raise QalasInputError(f"IE map shape {ie.shape} differs from T1 shape {t1.shape}.")
    mask = (t1 > 0) & (pd > 0) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != t1.shape:
        raise QalasInputError(f"mask shape {mask.shape} differs from T1 shape {t1.shape}.")
    if not mask.any():
        raise QalasInputError("synthetic contrasts: the mask is empty; nothing to synthesise.")
    for name, arr in (("T1", t1), ("T2", t2), ("PD", pd)) + ((("IE", ie),) if ie is not None else ()):
        if not np.isfinite(arr[mask]).all():
            raise QalasInputError(f"synthetic contrasts: the {name} map has NaN/Inf inside the mask.")
    return t1, t2, pd, ie, mask


def _shrunk_fluid(t1, t2, ie, mask, brain, fluid_class, noisy, reliable, crlb, residual, tissues):
    """T1, T2 and IE with the noisy fluid voxels replaced by their empirical-Bayes values
    (:func:`.fluid_shrinkage.shrink_fluid`), and the sidecar note describing it."""
    from .fluid_shrinkage import shrink_fluid

    fluid = mask & (t1 > CSF_T1_THRESHOLD) & noisy
    usable = reliable_voxels(mask, t1, t2, ie, crlb.get("t1"), residual)[0]
    names = {"t1": t1, "t2": t2} | ({"ie": ie} if ie is not None else {})
    csf = tissues.get("CSF") or {}
    brain_core = core_mask(fluid_class) & reliable
    centres = {"t1": csf.get("T1") if csf.get("Estimator") else None, "ie": csf.get("IE")}
    shrunk, groups = shrink_fluid(names, crlb, {
        "BrainFluid": (fluid & brain, brain_core, centres),
        "OtherFluid": (fluid & ~brain, usable & ~brain, {})})
    t1, t2 = shrunk["t1"], shrunk["t2"]
    ie = shrunk.get("ie", ie)
    shrink_note = {"Description": (
        f"noisy fluid voxels (T1 > {CSF_T1_THRESHOLD:g} s, relative T1 CRLB > {NOISY_REL_CRLB:g}) are "
        "synthesised from empirical-Bayes values: each parameter shrunk towards its group median "
        "with weight tau^2 / (tau^2 + CRLB^2) (qalas_bids.qalas.tissue.fluid_shrinkage); the maps are not "
        "changed"), "Groups": groups}
    return t1, t2, ie, shrink_note


def _contrast(spec, t1_v, t2_v, pd_v, ie_v, tissues, use_ie, null_mode, scale, shrink_note):
    """One contrast's values on the voxel vectors (before ``scale``) and its metadata;
    automatic inversion times null the tissues of ``tissues`` (:func:`null_inversion_times`)."""
    tr, te, equation = float(spec["RepetitionTime"]), float(spec["EchoTime"]), spec["Equation"]
    meta: dict[str, Any] = {
        "RepetitionTime": tr,
        "EchoTime": te,
        "Equation": equation,
        "EquationFormula": EQUATIONS[equation],
        "IEAware": use_ie if equation != "spin-echo" else False,
        "IntensityScale": scale,
        "Units": "arbitrary",
        "FluidShrinkage": shrink_note,
    }
    if equation == "spin-echo":
        values = spin_echo(t1_v, t2_v, pd_v, tr, te)
    else:
        tis = spec["InversionTime"]
        if tis == "auto":
            nulled = spec["Nulled"]
            null_t1 = [tissues[t]["T1"] for t in nulled]
            null_ie = [(tissues[t]["IE"] if use_ie and tissues[t]["IE"] is not None else 1.0) for t in nulled]
            tis = null_inversion_times(tr, null_t1, null_ie)
            meta["NullMode"] = null_mode
            meta["NullTissues"] = {t: dict(tissues[t]) for t in nulled}
        meta["InversionTime"] = tis if len(tis) > 1 else tis[0]
        mz = inversion_recovery_mz(t1_v, tr, tis, ie_v)
        values = pd_v * mz * _decay(te, t2_v)
        if equation != "phase-sensitive-inversion-recovery":
            values = np.abs(values)
    return values, meta
