"""Pure-CSF and WM/GM accuracy per condition (issue 21 item 4), small voxel sets.

Voxel sets of ``qalas_bids.testing.fit_conditions`` (CSF T1 3.5-4.5 s x T2 1.2-2.0 s plus
WM and GM, B1 0.85-1.15, Rician noise, noise-floor corrected), pretrained mode.
Tolerances:
* WM/GM: |median bias| < 0.5 % (T1, T2, PD, IE; SNR 120 so that 600 voxels resolve it) and
  NRMSE <= 1.1 x CRLB;
* the second start of fluid-like voxels (``restart_fluid``, opt-in ``fluid_restart=True``) never raises a voxel's cost,
  leaves WM/GM untouched, and lowers the CSF T1 NRMSE summed over the conditions;
* against the bound an unbiased estimator can reach (the Hammersley-Chapman-Robbins bound,
  ``tests/test_unbiased_bound.py``), the scan-specific fit meets the issue's CSF target at
  SNR 120: median T1 and PD within 3 % and NRMSE <= 1.2 x HCR in all 9 conditions (measured
  with 600 voxels each: |bias| <= 1.3 %, NRMSE <= 1.14 x HCR);
* the issue's CSF target as written (NRMSE <= 1.2 x CRLB) at SNR 60 is NOT met (strict
  xfail: it fails loudly once it is). In 4 of the 9 conditions no unbiased estimator can
  meet it (HCR 1.30-1.82 x CRLB), and the pretrained start also leaves T1 +3.5 to +7.9 %
  (docs/methods.md, "CSF").
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qalas_bids.qalas.fitting.network import PD_MAX, robust_scale
from qalas_bids.qalas.fitting.ssl import _cost, fit_ssl, refine_least_squares, restart_fluid
from qalas_bids.qalas.physics.timing import SequenceTiming
from qalas_bids.testing.fit_conditions import PARAMS, condition_table, voxel_set

N = 600


@pytest.fixture(scope="module")
def table_120():
    return condition_table(modes=("pretrained",), snrs=(120.0,), n=N, seed=1, threads=2)


def test_wm_gm_unbiased_and_at_the_crlb(table_120):
    rows = [r for r in table_120 if r.condition in ("WM", "GM")]
    assert len(rows) == 2
    for r in rows:
        for p in PARAMS:
            assert abs(r.bias[p]) < 0.005, f"{r.condition} {p} bias {r.bias[p]:+.4f}"
            assert r.ratio[p] <= 1.1, f"{r.condition} {p} NRMSE/CRLB {r.ratio[p]:.2f}"


def test_every_csf_condition_is_reported(table_120):
    csf = [r for r in table_120 if r.condition.startswith("CSF")]
    assert len(csf) == 9
    for r in csf:
        assert all(np.isfinite(r.bias[p]) and r.nrmse[p] > 0 and r.ratio[p] > 0 for p in PARAMS)


def test_fluid_restart_lowers_csf_error_and_never_the_fit():
    timing = SequenceTiming()
    mags, truth, conditions, _ = voxel_set(120.0, 300, seed=2)
    kw = dict(device="cpu", progress=False, refine_steps=8)
    plain = fit_ssl(mags, truth["b1"], timing, mode="pretrained", fluid_restart=False, **kw)
    fluid = fit_ssl(mags, truth["b1"], timing, mode="pretrained", fluid_restart=True, **kw)
    assert fluid.info["refinement"]["fluid_voxels"] > 0
    # the restart on its own tensors: never a higher cost than the first refinement
    scale = robust_scale(mags)
    y = torch.as_tensor(mags / scale, dtype=torch.float32)
    b1 = torch.as_tensor(truth["b1"], dtype=torch.float32)
    start = torch.as_tensor(np.stack([plain.t1, plain.t2, plain.pd / scale, plain.ie], 1), dtype=torch.float32)
    first, _ = refine_least_squares(start, y, b1, timing, steps=8, pd_max=PD_MAX)
    second, stats = restart_fluid(first, start, y, b1, timing, steps=16, pd_max=PD_MAX)
    assert stats["fluid_improved"] > 0
    assert torch.all(_cost(second, y, b1, timing) <= _cost(first, y, b1, timing))
    tissue = np.isin(conditions, ["WM", "GM"])
    np.testing.assert_array_equal(fluid.t1[tissue], plain.t1[tissue])
    csf = ~tissue
    err = {name: float(np.sqrt(np.mean((f.t1[csf] / truth["t1"][csf] - 1) ** 2))) for name, f in
           (("plain", plain), ("fluid", fluid))}
    assert err["fluid"] < err["plain"], err


def test_restart_fluid_keeps_non_fluid_voxels():
    timing = SequenceTiming()
    refined = torch.tensor([[0.9, 0.08, 10.0, 0.9]])
    out, stats = restart_fluid(refined, refined.clone(), torch.ones(1, 5) * 0.5, torch.ones(1), timing,
                               steps=4, pd_max=50.0)
    assert stats == {"fluid_voxels": 0, "fluid_improved": 0} and torch.equal(out, refined)


def test_scan_specific_csf_at_the_unbiased_bound_at_snr_120():
    rows = condition_table(modes=("scan-specific",), snrs=(120.0,), n=N, seed=1, threads=2, hcr=("t1", "pd"))
    csf = [r for r in rows if r.condition.startswith("CSF")]
    assert len(csf) == 9
    for r in csf:
        for p in ("t1", "pd"):
            assert abs(r.bias[p]) < 0.03 and r.ratio_hcr[p] <= 1.2, (r.condition, p, r.bias[p], r.ratio_hcr[p])
            assert r.hcr_over_crlb[p] >= 1.0


@pytest.mark.xfail(strict=True, reason="issue 21 item 4 as written is not met: in 4 of 9 CSF conditions at "
                                       "SNR 60 the HCR bound of any unbiased estimator is 1.3-1.8 x CRLB, and "
                                       "pretrained CSF T1 is +3.5..+7.9 % (see docs/methods.md, CSF)")
def test_csf_target_of_issue_21_at_snr_60():
    rows = condition_table(modes=("pretrained",), snrs=(60.0,), n=N, seed=1, threads=2)
    for r in rows:
        if r.condition.startswith("CSF"):
            for p in ("t1", "pd"):
                assert abs(r.bias[p]) < 0.03 and r.ratio[p] <= 1.2, (r.condition, p, r.bias[p], r.ratio[p])
