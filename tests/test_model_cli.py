"""CLI for user models: --save-model / --model / --force-model and qalas-bids-train."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

from qalas_bids.cli.parser import parse_args

CLI = [sys.executable, "-c", "from qalas_bids.cli.run import main; main()"]
N_SLICES = 4


@pytest.fixture(scope="module")
def bids(tmp_path_factory) -> Path:
    from qalas_bids.demo.dataset import write_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "bids"
    write_demo_dataset(root, subjects=("01",), sessions=("01",), runs=(1,), resolution=3.0, snr=60)
    shutil.rmtree(root / "derivatives", ignore_errors=True)
    for path in root.glob("sub-*/**/anat/*_QALAS.nii.gz"):
        img = nib.load(path)
        z0 = img.shape[2] // 2 - N_SLICES // 2
        nib.save(img.slicer[:, :, z0:z0 + N_SLICES], path)
    return root


def test_parser_model_options(bids, tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    opts = parse_args([str(bids), str(tmp_path / "o"), "participant", "--fit-mode", "pretrained",
                       "--model", str(model), "--force-model"])
    assert opts.model == model.resolve() and opts.force_model
    for bad in (["--model", str(model)],  # scan-specific does not use weights
                ["--fit-mode", "pretrained", "--force-model"],
                ["--fit-mode", "pretrained", "--save-model", str(tmp_path / "s")],
                ["--save-model", str(bids / "models")]):
        with pytest.raises(SystemExit) as exc:
            parse_args([str(bids), str(tmp_path / "o"), "participant", *bad])
        assert exc.value.code == 2


@pytest.mark.slow
def test_save_model_then_reuse_and_refuse(bids, tmp_path, capsys):
    out, models = tmp_path / "out", tmp_path / "models"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([*CLI, str(bids), str(out), "participant", "--epochs", "2", "--nprocs", "1",
                           "--skip-bids-validation", "--synth-contrasts", "T1w", "-w", str(tmp_path / "w"),
                           "--save-model", str(models)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = models / "sub-01_ses-01_run-1_desc-ssl_model.pt"
    from qalas_bids.qalas.fitting.cohort import read_model
    from qalas_bids.qalas.fitting.pretrained import file_sha256

    _, config = read_model(saved)
    assert config["acquisition"]["MagneticFieldStrength"] == 3
    assert any(s.endswith("_QALAS.nii.gz") and s.startswith("bids:raw:sub-01/") for s in config["training"]["sources"])
    sidecar = json.loads(next(out.rglob("sub-01_ses-01_run-1_T1map.json")).read_text())
    assert sidecar["FitInfo"]["SavedModel"] == {"Path": str(saved), "SHA256": file_sha256(saved)}
    assert "scan" in sidecar["FitInfo"]["Model"]["Role"]

    # qalas-bids-train on the same dataset (in process), one model for the one scanner
    from qalas_bids.cli.train import main as train_main

    assert train_main([str(bids), str(tmp_path / "cohort"), "--epochs", "2", "--device", "cpu"]) == 0
    cohort = sorted((tmp_path / "cohort" / "models").glob("cohort_scanner-*_model.pt"))
    assert len(cohort) == 1 and cohort[0].with_suffix(".json").is_file()
    assert "qalas-bids-train:" in capsys.readouterr().out

    # a model trained for another field strength is refused before any work (exit 2) ...
    from qalas_bids.cli.run import main
    from qalas_bids.qalas.fitting.cohort import annotate_model

    other = tmp_path / "other.pt"
    shutil.copy(saved, other)
    annotate_model(other, acquisition={**config["acquisition"], "MagneticFieldStrength": 1.5})
    args = [str(bids), str(tmp_path / "out2"), "participant", "--fit-mode", "pretrained", "--model", str(other),
            "--skip-bids-validation", "-w", str(tmp_path / "w2"), "--nprocs", "1", "--synth-contrasts", "T1w"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "field strength" in capsys.readouterr().err
    # ... and accepted with --force-model, the warning and the model's checksum in the sidecar
    with pytest.raises(SystemExit) as exc:
        main(args + ["--force-model"])
    assert exc.value.code == 0
    sidecar = json.loads(next((tmp_path / "out2").rglob("sub-01_ses-01_run-1_T1map.json")).read_text())
    assert sidecar["FitInfo"]["Model"]["SHA256"] == file_sha256(other)
    assert sidecar["FitInfo"]["Model"]["Forced"] is True
    assert any("--force-model" in w for w in sidecar["Warnings"])
