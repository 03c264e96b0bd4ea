"""Hammersley-Chapman-Robbins bound (qalas.fitting.unbiased_bound), issue 21 item 4.

* Where the likelihood is quadratic (WM), the profile distance of a small T1 shift matches
  the Cramér-Rao bound to 2 %: ``D(d) ~ (T1 d)^2 sigma^2 / CRLB^2`` (the nuisance parameters
  are really optimised: with them fixed, D would be larger), and the HCR bound equals the
  CRLB within 3 % at SNR 30 and 120.
* For pure CSF at SNR 30 (the voxel sets' SNR definition) the HCR bound on T1 and PD is more
  than 1.4 x the CRLB: no unbiased estimator can reach the issue's NRMSE <= 1.2 x CRLB
  there. At SNR 120 and T1 4.5 s it is within 5 % of the CRLB (the target is reachable).
"""
from __future__ import annotations

import numpy as np
import pytest

from qalas_bids.qalas.fitting.unbiased_bound import hcr_std, profile_distance
from qalas_bids.qalas.fitting.uncertainty import crlb_std
from qalas_bids.qalas.phantom.digital_brain import TISSUE_PARAMETERS
from qalas_bids.qalas.physics.timing import SequenceTiming
from qalas_bids.testing.fit_conditions import noise_sigma

TIMING = SequenceTiming()
WM = {**TISSUE_PARAMETERS["WM"], "b1": 1.0}


def _csf(t1: float, t2: float) -> dict:
    return {**TISSUE_PARAMETERS["CSF"], "t1": t1, "t2": t2, "b1": 1.0}


def test_small_shift_profile_matches_the_crlb():
    shifts, dist = profile_distance(WM, TIMING, "t1", np.array([-0.005, 0.005]))
    sigma = 1e-4  # small enough that the CRLB is not capped
    crlb = float(crlb_std(*(np.array([WM[p]]) for p in ("t1", "t2", "pd", "ie")), np.array([1.0]), TIMING,
                          sigma, device="cpu")["t1"][0]) / sigma
    # D(d) = (T1 d)^2 / CRLB(sigma = 1)^2 to second order
    np.testing.assert_allclose(dist * crlb ** 2 / (WM["t1"] * shifts) ** 2, 1.0, rtol=0.02)


def test_hcr_equals_crlb_for_white_matter():
    bound = hcr_std(WM, TIMING, np.array([noise_sigma(30.0), noise_sigma(120.0)]), "t1")
    np.testing.assert_array_less(bound.std / bound.crlb, 1.03)
    assert np.all(bound.std >= bound.crlb)


@pytest.mark.parametrize("t1,t2", [(3.5, 1.2), (4.5, 1.6)])
@pytest.mark.parametrize("which", ["t1", "pd"])
def test_no_unbiased_estimator_reaches_1_2_crlb_for_csf_at_snr_30(t1, t2, which):
    bound = hcr_std(_csf(t1, t2), TIMING, noise_sigma(30.0), which)
    assert bound.std[0] / bound.crlb[0] > 1.4, (bound.std, bound.crlb)
    assert bound.shift[0] > 0.5  # attained far out in the flat long-T1 tail


def test_csf_bound_is_near_the_crlb_at_snr_120():
    bound = hcr_std(_csf(4.5, 1.6), TIMING, noise_sigma(120.0), "t1")
    assert bound.std[0] / bound.crlb[0] < 1.05


def test_profile_rejects_ie():
    with pytest.raises(ValueError, match="which"):
        profile_distance(WM, TIMING, "ie")
