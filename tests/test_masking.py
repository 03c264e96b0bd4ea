"""Head mask on the digital brain: keeps brain and CSF, excludes background."""
import numpy as np
import pytest

from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.qalas.tissue.masking import compute_head_mask
from qalas_bids.qalas.phantom.digital_brain import make_digital_brain


@pytest.fixture(scope="module")
def brain():
    return make_digital_brain(resolution=2.0, snr=30.0, seed=2)


def _check(mask, brain):
    background = sum(brain.tissue_fractions.values()) == 0
    csf = brain.tissue_fractions["CSF"] > 0.5
    assert mask.dtype == bool and mask.shape == brain.brain_mask.shape
    assert mask[brain.brain_mask].mean() > 0.98
    assert mask[csf].mean() > 0.98
    assert mask[background].mean() < 0.05


def test_mask_keeps_brain_and_csf_excludes_background(brain):
    # CSF is dark in contrast 3 but must stay in the mask.
    csf = brain.tissue_fractions["CSF"] > 0.8
    assert np.median(brain.noiseless[csf, 2]) < 0.2 * np.median(brain.noiseless[csf, 0])
    _check(compute_head_mask(brain.signals), brain)


def test_mask_with_zeroed_background_and_scaled_int_data(brain):
    data = np.where(sum(brain.tissue_fractions.values())[..., None] > 0, brain.signals, 0.0)
    _check(compute_head_mask(data), brain)
    _check(compute_head_mask(np.round(brain.signals * 10000).astype(np.int16)), brain)


def test_mask_at_low_snr():
    low = make_digital_brain(resolution=2.0, snr=10.0, seed=5)
    _check(compute_head_mask(low.signals), low)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 4)), np.zeros((4, 4, 4, 3)),
                                 np.full((6, 6, 6, 5), np.nan), np.zeros((6, 6, 6, 5))])
def test_bad_input(bad):
    with pytest.raises(QalasInputError):
        compute_head_mask(bad)
