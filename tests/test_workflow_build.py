"""Workflow graphs are built from Settings + QalasRun without running anything heavy."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("nipype")

from qalas_bids.bids import B1Source, QalasRun  # noqa: E402
from qalas_bids.bids.inputs_check import PreparedInputs  # noqa: E402
from qalas_bids.config import Settings  # noqa: E402
from qalas_bids.workflows.base import init_qalas_bids_wf  # noqa: E402
from qalas_bids.workflows.fit import fit_resources  # noqa: E402


def _run(bids: Path, subject: str, session: str, run: str, with_b1: bool = True) -> QalasRun:
    anat = bids / f"sub-{subject}" / f"ses-{session}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    files = []
    for inv in range(5):
        path = anat / f"sub-{subject}_ses-{session}_run-{run}_inv-{inv}_QALAS.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), path)
        files.append(str(path))
    b1 = None
    if with_b1:
        fmap = anat.parent / "fmap"
        fmap.mkdir(exist_ok=True)
        famp = fmap / f"sub-{subject}_ses-{session}_acq-famp_run-{run}_TB1TFL.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), famp)
        b1 = B1Source(kind="tfl", files={"famp": str(famp)}, metadata={"FlipAngle": 80}, reason="test")
    entities = {"subject": subject, "session": session, "run": run}
    # What the input checks hand the workflow (files in the work directory).
    prepared = PreparedInputs(qalas_file=files[0], mask_file=files[1], b1_file=files[2] if with_b1 else None,
                              b1_info={"FieldOfViewCoverage": 1.0} if with_b1 else {})
    return QalasRun(subject=subject, session=session, run=run, acquisition=None,
                    qalas_files=tuple(files), metadata={"Manufacturer": "Siemens"}, b1=b1,
                    entities=entities, prepared=prepared)


def _settings(tmp_path, **kw):
    bids = tmp_path / "bids"
    return Settings(bids_dir=bids, output_dir=tmp_path / "out", work_dir=tmp_path / "work",
                    nprocs=4, omp_nthreads=2, **kw)


def test_one_fit_per_run_and_subject_workflows(tmp_path):
    settings = _settings(tmp_path)
    runs = [_run(settings.bids_dir, s, ses, r) for s in ("01", "02") for ses in ("A", "B") for r in ("1", "2")]
    wf = init_qalas_bids_wf(settings=settings, runs=runs)
    names = wf.list_node_names()
    fits = [n for n in names if n.endswith(".fit")]
    assert len(fits) == 8
    assert sum("sub_01_wf." in n for n in fits) == 4
    assert any("qalas_ses_A_run_2_wf.datasink_wf.ds_b1" in n for n in names)
    assert not any(n.endswith((".load_qalas", ".head_mask", ".b1_to_qalas")) for n in names)  # read once, before
    crash_dirs = {n.config["execution"]["crashdump_dir"] for n in wf._get_all_nodes()}
    assert crash_dirs == {str(settings.output_dir / f"sub-{s}" / "log" / settings.run_uuid)
                          for s in ("01", "02")}
    assert wf.base_dir == str(settings.work_dir)


def test_no_b1_and_options_reach_nodes(tmp_path):
    settings = _settings(tmp_path, no_b1=True, fit_mode="dictionary", seed=7, epochs=3,
                         synth_contrasts=("T1w", "FLAIR"), vendor_preset="ge")
    wf = init_qalas_bids_wf(settings=settings, runs=[_run(settings.bids_dir, "01", "A", "1", with_b1=False)])
    nodes = {n.name: n for n in wf._get_all_nodes()}
    assert "ds_b1" not in nodes
    fit = nodes["fit"]
    assert fit.inputs.method == "dictionary" and fit.inputs.seed == 7
    assert fit.inputs.ssl_options == {"epochs": 3}
    assert nodes["synthetic"].inputs.contrasts == ["T1w", "FLAIR"]
    assert set(fit.inputs.timing_sources.values()) & {"preset:ge"}  # --vendor-preset ge
    rel = nodes["ds_maps"].inputs.rel_paths
    assert rel[0] == "sub-01/ses-A/anat/sub-01_ses-A_run-1_T1map.nii.gz"
    assert "sub-01/ses-A/anat/sub-01_ses-A_run-1_desc-crlb_T2map.nii.gz" in rel
    assert all("inv-" not in p for p in rel)
    assert nodes["ds_maps"].inputs.metadata[0]["Units"] == "s"


def test_gpu_fit_claims_all_process_slots(tmp_path):
    run = _run(tmp_path / "bids", "01", "A", "1")
    cpu = fit_resources(run, _settings(tmp_path, resolved_device="cpu"))
    gpu = fit_resources(run, _settings(tmp_path, resolved_device="cuda:0"))
    assert cpu["n_procs"] == 2  # omp_nthreads
    assert gpu["n_procs"] == 4  # every slot: one fit per GPU at a time
