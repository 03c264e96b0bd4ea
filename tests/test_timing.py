"""Tests of the sequence timing object, presets and sidecar parsing."""
from __future__ import annotations

import pytest

from qalas_bids.qalas.physics.timing import (PRESETS, SequenceTiming, TimingError, get_preset,
                                     timing_from_metadata, vendor_key)


@pytest.mark.parametrize("vendor", sorted(PRESETS))
def test_presets_are_valid(vendor):
    timing = PRESETS[vendor]
    timing.validate()
    assert timing.etl < timing.gap
    assert all(v >= 0 for v in timing.delays().values())
    assert timing.tc <= timing.t2p
    assert get_preset(vendor) is timing


def test_siemens_preset_values():
    tm = PRESETS["siemens"]
    assert (tm.tf, tm.esp, tm.t2p, tm.tc, tm.gap, tm.tr_cycle) == (128, 0.0058, 0.1097, 0.0097, 0.9, 4.5)
    assert tm.etl == pytest.approx(128 * 0.0058)


@pytest.mark.parametrize("changes, message", [
    ({"d56": -0.01}, "d56"),
    ({"tc": 0.2}, "tc .* longer than the T2-prep"),
    ({"esp": 0.008}, "echo train .* longer than the readout spacing gap"),
    ({"tr_cycle": 4.0}, "negative delay.*end_of_cycle"),
    ({"gap": 0.8}, "negative delay.*before_t2prep"),
    ({"tf": 0}, "turbo factor"),
    ({"flip_angle": 95.0}, "flip angle"),
    ({"esp": float("nan")}, "esp"),
])
def test_impossible_timings_raise(changes, message):
    with pytest.raises(TimingError, match=message):
        PRESETS["siemens"].replace(**changes)


def test_timing_error_is_value_error():
    assert issubclass(TimingError, ValueError)


def test_vendor_key_aliases():
    assert vendor_key("SIEMENS") == "siemens"
    assert vendor_key("GE MEDICAL SYSTEMS") == "ge"
    assert vendor_key("Philips Medical Systems") == "philips"
    assert vendor_key("Canon") is None
    assert vendor_key(None) is None


def test_metadata_values_with_plausible_magnitude_are_used():
    meta = {"Manufacturer": "Siemens", "RepetitionTime": 0.0061, "EchoTrainLength": 127,
            "FlipAngle": 5}
    prov = timing_from_metadata(meta)
    tm = prov.timing
    assert (tm.esp, tm.tf, tm.flip_angle) == (0.0061, 127, 5.0)
    assert prov.sources["esp"] == "sidecar:RepetitionTime"
    assert prov.sources["tf"] == "sidecar:EchoTrainLength"
    assert prov.sources["flip_angle"] == "sidecar:FlipAngle"
    assert prov.sources["t2p"] == "preset:siemens"
    assert tm.vendor == "siemens+custom"
    assert not prov.warnings


def test_metadata_values_out_of_range_are_ignored_with_warning():
    # RepetitionTime 4.5 s is the cycle, not the echo spacing; 80 deg is the B1-map flip.
    meta = {"Manufacturer": "Siemens", "RepetitionTime": 4.5, "EchoTrainLength": 2,
            "FlipAngle": 80}
    prov = timing_from_metadata(meta)
    assert prov.timing == PRESETS["siemens"]
    assert len(prov.warnings) == 3
    assert any("RepetitionTime" in w and "plausible" in w for w in prov.warnings)


def test_non_numeric_metadata_is_ignored_with_warning():
    prov = timing_from_metadata({"Manufacturer": "Siemens", "EchoTrainLength": "many"})
    assert prov.timing.tf == 128
    assert any("not a number" in w for w in prov.warnings)


@pytest.mark.parametrize("meta", [{"Manufacturer": "Canon"}, {}, None])
def test_unknown_manufacturer_without_preset_raises(meta):
    with pytest.raises(TimingError, match="vendor-preset"):
        timing_from_metadata(meta)


def test_explicit_vendor_preset_used_without_manufacturer():
    prov = timing_from_metadata({"Manufacturer": "Canon"}, vendor="ge")
    assert prov.timing == PRESETS["ge"]
    assert prov.timing.vendor == "ge"


def test_unknown_vendor_preset_raises():
    with pytest.raises(TimingError, match="unknown vendor"):
        timing_from_metadata({"Manufacturer": "Siemens"}, vendor="canon")


def test_overrides_win_over_sidecar_and_preset():
    meta = {"Manufacturer": "Siemens", "RepetitionTime": 0.0061}
    prov = timing_from_metadata(meta, overrides={"esp": 0.0055, "gap": 0.88})
    assert prov.timing.esp == 0.0055 and prov.timing.gap == 0.88
    assert prov.sources["esp"] == prov.sources["gap"] == "override"


def test_unknown_override_raises():
    with pytest.raises(TimingError, match="unknown timing override"):
        timing_from_metadata({"Manufacturer": "Siemens"}, overrides={"te": 0.01})


def test_impossible_override_raises():
    with pytest.raises(TimingError):
        timing_from_metadata({"Manufacturer": "Siemens"}, overrides={"tf": 200})


def test_differs_from_and_as_dict():
    a = PRESETS["siemens"]
    b = a.replace(esp=0.0061)
    assert set(a.differs_from(b)) == {"esp"}
    assert a.as_dict()["vendor"] == "siemens"
    assert isinstance(SequenceTiming().as_dict()["tf"], int)
