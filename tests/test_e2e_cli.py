"""End to end: the real ``qalas-bids`` CLI in a subprocess on a tiny demo dataset.

The demo dataset (2 mm digital brain) is cropped to a 6-slice slab so that each fit takes
seconds; training uses ``--epochs 2`` (accuracy is tested elsewhere, here the product is).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from qalas_bids.cli.run import main; main()"]
FAST = ["--epochs", "2", "--nprocs", "2", "--omp-nthreads", "1", "--skip-bids-validation"]
N_SLICES = 6
MAP_SUFFIXES = ("T1map", "T2map", "PDmap", "IEmap", "desc-crlb_T1map", "desc-crlb_T2map",
                "desc-crlb_PDmap", "desc-crlb_IEmap", "desc-residual_QALAS", "desc-brain_mask")
SYNTHETIC = ("T1w", "T2w", "PDw", "FLAIR", "DIR", "PSIR", "STIR")


def run_cli(*args, env_extra=None, timeout=600):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
           **(env_extra or {})}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def crop_qalas(bids: Path) -> None:
    """Keep a central slab of every QALAS volume (affine updated by nibabel's slicer)."""
    for path in bids.glob("sub-*/**/anat/*_QALAS.nii.gz"):
        img = nib.load(path)
        z0 = img.shape[2] // 2 - N_SLICES // 2
        nib.save(img.slicer[:, :, z0:z0 + N_SLICES], path)


def clone_subject(bids: Path, src: str, dst: str) -> None:
    """Copy sub-<src> to sub-<dst>, renaming files and paths inside sidecars/TSVs."""
    for path in sorted((bids / f"sub-{src}").rglob("*")):
        target = bids / f"sub-{dst}" / path.relative_to(bids / f"sub-{src}")
        target = target.with_name(target.name.replace(f"sub-{src}", f"sub-{dst}"))
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix in (".json", ".tsv"):
            target.write_text(path.read_text().replace(f"sub-{src}", f"sub-{dst}"))
        else:
            shutil.copy2(path, target)
    participants = bids / "participants.tsv"
    lines = participants.read_text().splitlines()
    row = next(line for line in lines[1:] if line.startswith(f"sub-{src}"))
    participants.write_text("\n".join(lines + [row.replace(f"sub-{src}", f"sub-{dst}")]) + "\n")


@pytest.fixture(scope="session")
def demo_bids(tmp_path_factory) -> Path:
    """sub-01 and sub-02, two sessions x two runs each, cropped (never modified by tests)."""
    from qalas_bids.demo.dataset import write_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "bids"
    write_demo_dataset(root, subjects=("01",), sessions=("01", "02"), runs=(1, 2), snr=60)
    shutil.rmtree(root / "derivatives", ignore_errors=True)  # ground truth not needed here
    crop_qalas(root)
    clone_subject(root, "01", "02")
    return root


@pytest.fixture()
def small_bids(demo_bids, tmp_path) -> Path:
    """A writable copy with only sub-01 ses-01 run-1 (for the bad-input cases)."""
    root = tmp_path / "bids"
    shutil.copytree(demo_bids, root)
    shutil.rmtree(root / "sub-02")
    shutil.rmtree(root / "sub-01" / "ses-02")
    for path in (root / "sub-01" / "ses-01").rglob("*run-2*"):
        path.unlink()
    return root


def checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def set_read_only(root: Path, read_only: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        if read_only:
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        else:
            path.chmod(mode | stat.S_IWUSR)


def assert_usage_error(proc, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.search(pattern, proc.stderr, re.IGNORECASE), proc.stderr[-3000:]


def test_participant_run_on_read_only_input(demo_bids, tmp_path):
    """Four fits (2 sessions x 2 runs), every output with sidecars, input untouched, re-run cached."""
    before = checksums(demo_bids)
    out, work = tmp_path / "out", tmp_path / "work"
    set_read_only(demo_bids, True)
    try:
        proc = run_cli(demo_bids, out, "participant", "--participant-label", "sub-01", "-w", work, *FAST)
        assert proc.returncode == 0, proc.stderr[-4000:]
        for ses in ("01", "02"):
            for run in ("1", "2"):
                prefix = f"sub-01_ses-{ses}_run-{run}"
                anat = out / "sub-01" / f"ses-{ses}" / "anat"
                for suffix in MAP_SUFFIXES + tuple(f"desc-synthetic_{c}" for c in SYNTHETIC):
                    nii = anat / f"{prefix}_{suffix}.nii.gz"
                    assert nii.is_file(), nii
                    assert (anat / f"{prefix}_{suffix}.json").is_file(), suffix
                b1 = out / "sub-01" / f"ses-{ses}" / "fmap" / f"{prefix}_space-QALAS_TB1map.nii.gz"
                assert b1.is_file()
                t1_img = nib.load(anat / f"{prefix}_T1map.nii.gz")
                qalas = nib.load(demo_bids / "sub-01" / f"ses-{ses}" / "anat" / f"{prefix}_inv-0_QALAS.nii.gz")
                assert t1_img.shape == qalas.shape and np.allclose(t1_img.affine, qalas.affine, atol=1e-4)
                t1 = np.asarray(t1_img.dataobj)
                assert np.isfinite(t1).all() and t1.max() > 0
                b1_data = np.asarray(nib.load(b1).dataobj)
                inside = b1_data[b1_data > 0]
                assert inside.min() >= 0.65 - 1e-6 and inside.max() <= 1.35 + 1e-6
                side = json.loads((anat / f"{prefix}_T1map.json").read_text())
                assert side["Units"] == "s" and side["FitMode"] == "scan-specific"
                assert all(s.startswith("bids:raw:sub-01/") for s in side["Sources"])
                assert side["SequenceTiming"]["tf"] > 0 and side["FitInfo"]["Epochs"] == 2
                assert "EstimationAlgorithm" in side and "SkullStripped" in side
                flair = json.loads((anat / f"{prefix}_desc-synthetic_FLAIR.json").read_text())
                assert {"RepetitionTime", "EchoTime", "InversionTime"} <= set(flair)
        assert not (out / "sub-02").exists()
        desc = json.loads((out / "dataset_description.json").read_text())
        assert desc["DatasetType"] == "derivative"
        for name in ("CITATION.md", "CITATION.bib", "CITATION.html"):
            assert (out / "logs" / name).is_file()
        assert (out / "sub-01.html").is_file()
        assert list((out / "logs").glob("config-*.json"))

        # re-run: the work directory is reused, the fits are not redone
        fit_results = sorted(work.rglob("fit/result_fit.pklz"))
        assert len(fit_results) == 4
        mtimes = [p.stat().st_mtime_ns for p in fit_results]
        good = checksums(out / "sub-01")
        linear = ["--epochs", "2", "--nprocs", "1", "--skip-bids-validation"]  # Linear plugin
        proc2 = run_cli(demo_bids, out, "participant", "--participant-label", "01", "-w", work, *linear)
        assert proc2.returncode == 0, proc2.stderr[-4000:]
        assert [p.stat().st_mtime_ns for p in fit_results] == mtimes

        # a later failing run (processing crash -> exit 1) never deletes earlier outputs
        bad = tmp_path / "bad_synth.json"
        bad.write_text(json.dumps({"T1w": {"RepetitionTime": -1.0}}))
        one_run = tmp_path / "one_run.json"
        one_run.write_text(json.dumps({"qalas": {"session": "01", "run": 1}}))
        proc3 = run_cli(demo_bids, out, "participant", "--participant-label", "01", "-w", work,
                        "--synth-params", bad, "--bids-filter-file", one_run, *FAST)
        assert proc3.returncode in (1, 2), proc3.stderr[-4000:]
        if proc3.returncode == 1:
            assert "crash file" in proc3.stderr.lower()
        after = checksums(out / "sub-01")
        for rel, digest in good.items():
            if rel.endswith(".nii.gz") and "/figures/" not in rel:
                assert after.get(rel) == digest, rel
    finally:
        set_read_only(demo_bids, False)
    assert checksums(demo_bids) == before


def test_selection_by_label_and_filter_file(demo_bids, tmp_path):
    """--participant-label and --bids-filter-file narrow the runs (checked without fitting)."""
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"qalas": {"session": "02", "run": 1}}))
    proc = run_cli(demo_bids, tmp_path / "out", "participant", "--participant-label", "02",
                   "--bids-filter-file", filters, "--boilerplate-only", "-w", tmp_path / "work",
                   "--skip-bids-validation")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 QALAS run(s) of 1 participant(s)" in proc.stderr
    assert "sub-02_ses-02_run-1" in proc.stderr
    assert "sub-01_" not in proc.stderr and "ses-01_run" not in proc.stderr
    assert (tmp_path / "out" / "logs" / "CITATION.md").is_file()

    proc = run_cli(demo_bids, tmp_path / "out2", "participant", "--boilerplate-only",
                   "-w", tmp_path / "work2")  # validation runs when the validator is installed
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 QALAS run(s) of 2 participant(s)" in proc.stderr


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _qalas(root: Path, inv: int) -> Path:
    return next(root.glob(f"sub-01/ses-01/anat/*_inv-{inv}_QALAS.nii.gz"))


def _break_missing_b1(root):
    shutil.rmtree(root / "sub-01" / "ses-01" / "fmap")


def _break_four_volumes(root):
    path = _qalas(root, 4)
    path.unlink()
    Path(str(path).replace(".nii.gz", ".json")).unlink()


def _break_grids(root):
    path = _qalas(root, 3)
    img = nib.load(path)
    nib.save(img.slicer[:, :, 1:], path)


def _break_manufacturer(root):
    for path in root.glob("sub-01/ses-01/anat/*_QALAS.json"):
        _edit_json(path, Manufacturer=None)


def _break_nans(root):
    path = _qalas(root, 2)
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[data.shape[0] // 2, data.shape[1] // 2, :] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), path)  # float32 header: NaN survives


def _b1_only_in_other_session(root):
    ses2 = root / "sub-01" / "ses-02"
    (ses2 / "fmap").mkdir(parents=True)
    for path in (root / "sub-01" / "ses-01" / "fmap").iterdir():
        target = ses2 / "fmap" / path.name.replace("ses-01", "ses-02")
        if path.suffix == ".json":
            _edit_json(path, IntendedFor=None)
            target.write_text(path.read_text())
        else:
            shutil.copy2(path, target)
    shutil.rmtree(root / "sub-01" / "ses-01" / "fmap")


def _volumes_out_of_order(root):
    """inv-k holds the volume of readout k+1 (order [1, 2, 3, 4, 0]); sidecars unchanged."""
    paths = [_qalas(root, k) for k in range(5)]
    images = [nib.load(p) for p in paths]
    data = [np.asarray(img.dataobj) for img in images]
    for k, path in enumerate(paths):
        nib.save(nib.Nifti1Image(data[(k + 1) % 5], images[k].affine, images[k].header), path)


def _4d_out_of_order(root):
    """One 4D file in the order [1, 2, 3, 4, 0], its sidecar's InversionTime showing it."""
    paths = [_qalas(root, k) for k in range(5)]
    metas = [json.loads(Path(str(p).replace(".nii.gz", ".json")).read_text()) for p in paths]
    ref = nib.load(paths[0])
    stack = np.stack([np.asarray(nib.load(paths[(k + 1) % 5]).dataobj) for k in range(5)], axis=-1)
    name = paths[0].name.replace("_inv-0", "")
    nib.save(nib.Nifti1Image(stack, ref.affine, ref.header), paths[0].parent / name)
    side = dict(metas[0], InversionTime=[metas[(k + 1) % 5]["InversionTime"] for k in range(5)])
    (paths[0].parent / name.replace(".nii.gz", ".json")).write_text(json.dumps(side))
    for path in paths:
        path.unlink()
        Path(str(path).replace(".nii.gz", ".json")).unlink()


def _famp(root: Path) -> Path:
    return next(root.glob("sub-01/ses-01/fmap/*_acq-famp_*TB1TFL.nii.gz"))


def _edit_famp(root: Path, change) -> None:
    path = _famp(root)
    img = nib.load(path)
    nib.save(nib.Nifti1Image(change(np.asarray(img.dataobj, dtype=np.float32)), img.affine), path)


def _b1_all_zero(root):
    _edit_famp(root, np.zeros_like)


def _b1_wrong_flip_angle(root):
    _edit_json(Path(str(_famp(root)).replace(".nii.gz", ".json")), FlipAngle=8)


def _b1_nans(root):
    def poke(data):
        data[data.shape[0] // 2, data.shape[1] // 2, :] = np.nan
        return data
    _edit_famp(root, poke)


def _b1_truncated(root):
    path = _famp(root)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _b1_partial_coverage(root):
    """The famp map loses its upper 40 % of slices (the QALAS slab is 6 slices in the middle)."""
    path = _famp(root)
    img = nib.load(path)
    axis = int(np.argmax(np.abs(img.affine[2, :3])))  # the famp axis closest to z
    keep = [slice(None)] * 3
    keep[axis] = slice(0, int(img.shape[axis] * 0.52)) if img.affine[2, axis] > 0 else slice(int(img.shape[axis] * 0.48), None)
    nib.save(img.slicer[tuple(keep)], path)


BAD_INPUTS = {
    "b1_all_zero": (_b1_all_zero, r"B1 map .*median of 0.00 in the head"),
    "b1_wrong_flip_angle": (_b1_wrong_flip_angle, r"median of [89]\.\d+ .*about [6-9]\d deg: pass it with --b1-flip-angle"),
    "b1_nans": (_b1_nans, r"B1 map .* NaN/Inf"),
    "b1_truncated": (_b1_truncated, r"could not be read"),
    "b1_partial_coverage": (_b1_partial_coverage, r"covers only \d+% of the head.*--b1-min-coverage"),
    "volumes_out_of_order": (_volumes_out_of_order, r"not in readout order.*inv-0_QALAS.nii.gz -> inv-1"),
    "4d_out_of_order": (_4d_out_of_order, r"not in readout order.*order \[4, 0, 1, 2, 3\].*InversionTime"),
    "missing_b1": (_break_missing_b1, r"b1|B1"),
    "four_volumes": (_break_four_volumes, r"4 QALAS volumes|5 contrasts|five"),
    "mismatched_grids": (_break_grids, r"grid"),
    "missing_manufacturer": (_break_manufacturer, r"Manufacturer"),
    "nans": (_break_nans, r"NaN"),
    "b1_other_session": (_b1_only_in_other_session, r"session|B1"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2(small_bids, tmp_path, case):
    breaker, pattern = BAD_INPUTS[case]
    breaker(small_bids)
    proc = run_cli(small_bids, tmp_path / "out", "participant", "-w", tmp_path / "work", *FAST)
    assert_usage_error(proc, pattern)
    assert "--no-b1" in proc.stderr or case != "missing_b1"


def test_output_in_bids_derivatives_folder_runs_twice(small_bids, tmp_path):
    """``<bids_dir>/derivatives/qalas-bids`` (the BIDS place) works, and a re-run there too."""
    before = checksums(small_bids)
    out = small_bids / "derivatives" / "qalas-bids"
    anat = out / "sub-01" / "ses-01" / "anat"
    for attempt, extra in enumerate((["--skip-bids-validation"], [])):  # validate with outputs there
        # a fresh work dir the second time: the fit is redone with our outputs in the input tree
        args = [a for a in FAST if a != "--skip-bids-validation"] + extra
        proc = run_cli(small_bids, out, "participant", "-w", tmp_path / f"work{attempt}", *args)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "Traceback" not in proc.stderr
        assert len(list(out.rglob("*_run-1_T1map.nii.gz"))) == 1  # our outputs are not inputs
        assert (anat / "sub-01_ses-01_run-1_T1map.nii.gz").is_file()
    side = json.loads((anat / "sub-01_ses-01_run-1_T1map.json").read_text())
    assert all(s.startswith("bids:raw:sub-01/") for s in side["Sources"])
    after = checksums(small_bids)
    assert {k: v for k, v in after.items() if not k.startswith("derivatives/qalas-bids/")} == before


MALFORMED_SIDECARS = {"array": "[1, 2]", "number": "42", "string": '"FlipAngle"',
                      "nested_array": '[{"FlipAngle": 4}, [null]]', "null": "null"}


@pytest.mark.parametrize("shape", sorted(MALFORMED_SIDECARS))
@pytest.mark.parametrize("which", ["qalas", "b1", "top_level"])
def test_malformed_sidecar_exits_2_naming_file(small_bids, tmp_path, shape, which):
    if which == "top_level":
        bad = small_bids / "inv-0_QALAS.json"  # an inherited sidecar at the dataset root
    else:
        pattern = "anat/*inv-0_QALAS.json" if which == "qalas" else "fmap/*.json"
        bad = sorted(small_bids.glob(f"sub-01/ses-01/{pattern}"))[0]
    bad.write_text(MALFORMED_SIDECARS[shape])
    before = checksums(small_bids)
    proc = run_cli(small_bids, tmp_path / "out", "participant", "-w", tmp_path / "work", *FAST)
    assert_usage_error(proc, re.escape(str(bad.relative_to(small_bids))))
    assert "JSON object" in proc.stderr
    assert checksums(small_bids) == before
    assert not (tmp_path / "out" / "sub-01").exists()


def test_usage_errors_exit_2(small_bids, tmp_path):
    before = checksums(small_bids)
    for inside in ("", "sub-01", "code/qalas"):  # the root and other raw folders stay refused
        proc = run_cli(small_bids, small_bids / inside, "participant", "-w", tmp_path / "work")
        assert_usage_error(proc, r"inside the raw BIDS dataset")
    assert checksums(small_bids) == before and not (small_bids / "code").exists()
    proc = run_cli(small_bids, tmp_path / "out", "participant", "--participant-label", "99",
                   "-w", tmp_path / "work", "--skip-bids-validation")
    assert_usage_error(proc, r"99")
    proc = run_cli(small_bids, tmp_path / "out", "participant", "--nprocs", "0")
    assert_usage_error(proc, r"positive integer")
    proc = run_cli(tmp_path / "missing", tmp_path / "out", "participant")
    assert_usage_error(proc, r"does not exist")


def test_output_dir_that_is_a_file_exits_2(small_bids, tmp_path):
    target = tmp_path / "out"
    target.write_text("not a folder")
    proc = run_cli(small_bids, target, "participant", "-w", tmp_path / "work", *FAST)
    assert_usage_error(proc, r"cannot write to .*out: it is a file, not a folder")
    assert target.read_text() == "not a folder"


def test_cuda_without_gpu_exits_2(small_bids, tmp_path):
    proc = run_cli(small_bids, tmp_path / "out", "participant", "--device", "cuda",
                   "-w", tmp_path / "work", "--skip-bids-validation",
                   env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert_usage_error(proc, r"--device cuda.*no CUDA GPU")
    assert "--device cpu" in proc.stderr


def test_progress_lines_under_multiproc_and_quiet(small_bids, tmp_path):
    """Progress (phase, epoch, loss, elapsed, ETA) reaches the terminal from MultiProc workers;
    the stage-timing table ends the run; -q silences both."""
    env = {"QALAS_BIDS_PROGRESS_INTERVAL": "0.2"}
    args = ["participant", "--epochs", "10", "--nprocs", "2", "--skip-bids-validation"]
    loud = run_cli(small_bids, tmp_path / "out", *args, "-w", tmp_path / "w1", env_extra=env)
    assert loud.returncode == 0, loud.stderr[-3000:]
    lines = [ln for ln in loud.stderr.splitlines() if ln.startswith("qalas-bids progress: sub-01_ses-01_run-1")]
    assert any("SSL training" in ln and "epoch" in ln and "loss" in ln and "ETA" in ln for ln in lines), lines[-5:]
    assert all("elapsed" in ln for ln in lines)
    assert "qalas-bids stage timing" in loud.stderr and "fit: refinement" in loud.stderr
    timing = json.loads(next((tmp_path / "out" / "logs").glob("timing-*.json")).read_text())
    assert any(s["stage"] == "fit" and s["seconds"] > 0 for s in timing["stages"])
    quiet = run_cli(small_bids, tmp_path / "out2", *args, "-w", tmp_path / "w2", "-q", env_extra=env)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "qalas-bids progress" not in quiet.stderr and "stage timing" not in quiet.stderr
    assert " | INFO " not in quiet.stderr
