"""``--fit-mode pretrained`` on Siemens, GE and Philips timing: the shipped model of that
vendor is picked, and WM/GM median bias stays below 0.5 % (demo brain, SNR 60)."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import crop_slab, tissue_bias
from test_e2e_cli import CLI

pytestmark = pytest.mark.slow
BIAS_LIMIT = 0.005


@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips"])
def test_pretrained_picks_the_vendor_model_and_is_unbiased(vendor, tmp_path):
    from qalas_bids.demo.dataset import write_demo_dataset

    bids = tmp_path / "bids"
    write_demo_dataset(bids, subjects=("01",), sessions=(), runs=(), snr=60, seed=0, vendor=vendor)
    crop_slab(bids, 12)
    proc = subprocess.run([*CLI, str(bids), str(tmp_path / "out"), "participant", "--fit-mode", "pretrained",
                           "--skip-bids-validation", "--synth-contrasts", "T1w", "-w", str(tmp_path / "work"), "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    anat = tmp_path / "out" / "sub-01" / "anat"
    side = json.loads((anat / "sub-01_T1map.json").read_text())
    assert side["FitInfo"]["Model"]["Path"].endswith(f"ssl_pretrained_{vendor}.pt")
    for name, bias in tissue_bias(bids, tmp_path / "out", "sub-01", maps=("T1map", "T2map")).items():
        assert abs(bias) < BIAS_LIMIT, f"{vendor} {name} median bias {bias:+.4f}"


def test_pretrained_on_an_unknown_timing_is_refused_before_work(tmp_path):
    from qalas_bids.demo.dataset import write_demo_dataset

    bids = tmp_path / "bids"
    write_demo_dataset(bids, subjects=("01",), sessions=(), runs=(), snr=60, seed=0, vendor="ge")
    for path in (bids / "sub-01" / "anat").glob("*_QALAS.json"):  # a GE protocol with another T2 prep
        meta = json.loads(path.read_text())
        meta["T2PrepDuration"] = 0.05
        path.write_text(json.dumps(meta))
    proc = subprocess.run([*CLI, str(bids), str(tmp_path / "out"), "participant", "--fit-mode", "pretrained",
                           "--skip-bids-validation", "-w", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "no shipped pretrained model" in proc.stderr and "--fit-mode fine-tune" in proc.stderr
    assert not (tmp_path / "out" / "sub-01").exists()
