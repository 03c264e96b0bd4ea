"""The three bands of a plausibility gate (qalas_bids.qalas.gates)."""
import pytest

from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.qalas.gates import Band, apply_gate

BAND = Band("b1-median", "median relative B1", fine=(0.8, 1.25), tolerated=(0.6, 1.4))


@pytest.mark.parametrize("value, verdict", [(1.0, "fine"), (0.8, "fine"), (0.7, "warning"), (1.4, "warning"),
                                            (0.59, "refuse"), (3.0, "refuse"), (None, "refuse"),
                                            (float("nan"), "refuse")])
def test_verdicts(value, verdict):
    assert BAND.verdict(value) == verdict


def test_fine_is_silent_warning_carries_the_figure():
    record, warning = apply_gate(BAND, 1.0, "broken")
    assert warning is None and record["Band"] == "fine" and record["Tolerated"] == [0.6, 1.4]
    record, warning = apply_gate(BAND, 0.7, "broken")
    assert record["Band"] == "warning" and "0.7" in warning and warning.startswith("gate b1-median")


def test_refusal_names_its_option_and_relaxing_it_warns():
    with pytest.raises(QalasInputError, match=r"broken\. .*--relax-gate b1-median"):
        apply_gate(BAND, 3.0, "broken")
    record, warning = apply_gate(BAND, 3.0, "broken", relaxed=("b1-median",))
    assert record["Band"] == "refused-relaxed" and record["Value"] == 3.0 and "relaxed" in warning
