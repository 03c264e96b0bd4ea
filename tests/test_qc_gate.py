"""Post-fit QC gate: implausible maps are marked failed in every sidecar, exit status 3."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from qalas_bids.execution.finish import EXIT_OK, qc_gate
from qalas_bids.testing.fake_derivatives import write_fake_derivatives
from qalas_bids.reports.qc_gate import EXIT_QC_FAILED, apply_qc_gate, qc_failures


def test_criteria():
    assert qc_failures({"T1map_WM_median": 0.9, "residual_median": 0.02}) == []
    assert "WM median T1 0.002 s" in qc_failures({"T1map_WM_median": 0.002, "residual_median": 0.02})[0]
    assert "residual 35.0%" in qc_failures({"T1map_WM_median": 0.9, "residual_median": 0.35})[0]
    assert len(qc_failures({})) == 2  # missing values fail, never pass silently


@pytest.fixture()
def outputs(tmp_path):
    out = tmp_path / "out"
    write_fake_derivatives(out, "01", resolution=4.0, with_synthetic=False, seed=0)
    write_fake_derivatives(out, "02", resolution=4.0, with_synthetic=False, seed=1, t1_scale=4.0)
    return out


def test_only_the_implausible_run_is_marked(outputs):
    failed = apply_qc_gate(outputs, ["sub-01", "sub-02"])
    assert list(failed) == ["sub-02"] and "WM median T1" in failed["sub-02"][0]
    bad = sorted((outputs / "sub-02").rglob("*.json"))
    assert bad and all(json.loads(p.read_text())["QC"]["Status"] == "failed" for p in bad)
    assert all(any(w.startswith("QC failed:") for w in json.loads(p.read_text())["Warnings"]) for p in bad)
    assert not any("QC" in json.loads(p.read_text()) for p in (outputs / "sub-01").rglob("*.json"))
    apply_qc_gate(outputs, ["sub-02"])  # idempotent: one QC warning, not two
    warnings = json.loads(bad[0].read_text())["Warnings"]
    assert sum(w.startswith("QC failed:") for w in warnings) == 1


@pytest.mark.parametrize("accept, expected", [(False, EXIT_QC_FAILED), (True, EXIT_OK)])
def test_exit_status(outputs, capsys, accept, expected):
    settings = SimpleNamespace(output_dir=outputs, accept_qc_failures=accept)
    runs = [SimpleNamespace(label="sub-01"), SimpleNamespace(label="sub-02")]
    assert qc_gate(settings, runs) == expected
    assert ("failed QC (exit status 3)" in capsys.readouterr().err) is not accept
    assert qc_gate(settings, runs[:1]) == EXIT_OK
