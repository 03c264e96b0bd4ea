"""Concurrent participants: what a SLURM array does to one output directory.

Four ``qalas-bids`` processes (one participant each) are started together, sharing the
output directory and the default ``./work`` directory, three times in a row. Every shared
file (``dataset_description.json``, ``.bidsignore``, ``logs/CITATION.*``) must be complete
and valid afterwards, every participant's maps and report present, no temporary file left.
A second process for the *same* participant and work directory is refused (exit 2).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from test_e2e_cli import CLI, MAP_SUFFIXES, assert_usage_error, crop_qalas

pytestmark = pytest.mark.slow

SUBJECTS = ("01", "02", "03", "04")
ROUNDS = 3
OPTIONS = ["--fit-mode", "pretrained", "--nprocs", "1", "--skip-bids-validation", "--synth-contrasts",
           "T1w,FLAIR"]


@pytest.fixture(scope="module")
def four_subjects(tmp_path_factory) -> Path:
    from qalas_bids.demo.dataset import write_demo_dataset

    root = tmp_path_factory.mktemp("concurrent") / "bids"
    write_demo_dataset(root, subjects=SUBJECTS, sessions=(), runs=(), snr=60)
    crop_qalas(root)
    return root


def start(cwd: Path, bids: Path, out: Path, subject: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, str(bids), str(out), "participant", "--participant-label", subject,
                             *OPTIONS, *extra], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def check_shared_files(out: Path) -> None:
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "qalas-bids"
    ignore = (out / ".bidsignore").read_text().splitlines()
    assert len(ignore) == len(set(ignore)) and "/group_*" in ignore and "*_IEmap.*" in ignore
    citation = (out / "logs" / "CITATION.md").read_text()
    assert f"for {len(SUBJECTS)} participants" in citation, citation[:600]
    assert (out / "logs" / "CITATION.bib").read_text().strip()
    assert "</html>" in (out / "logs" / "CITATION.html").read_text()
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def check_participant(out: Path, subject: str) -> None:
    anat = out / f"sub-{subject}" / "anat"
    for suffix in MAP_SUFFIXES:
        assert (anat / f"sub-{subject}_{suffix}.nii.gz").is_file(), (subject, suffix)
        json.loads((anat / f"sub-{subject}_{suffix}.json").read_text())
    report = (out / f"sub-{subject}.html").read_text()
    assert "</html>" in report
    figures = list((out / f"sub-{subject}" / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 0 for f in figures)


@pytest.mark.parametrize("round_", range(1, ROUNDS + 1))
def test_four_participants_at_once(round_, four_subjects, tmp_path):
    out = tmp_path / "out"
    procs = {s: start(tmp_path, four_subjects, out, s) for s in SUBJECTS}
    results = {s: (p.wait(timeout=900), p.stderr.read()) for s, p in procs.items()}
    for subject, (code, stderr) in results.items():
        assert code == 0, f"sub-{subject} exit {code}:\n{stderr[-3000:]}"
        assert "Traceback" not in stderr, stderr[-3000:]
    check_shared_files(out)
    for subject in SUBJECTS:
        check_participant(out, subject)


def test_same_participant_twice_with_one_work_dir_is_refused(four_subjects, tmp_path):
    """While another process holds sub-01's work-dir lock, a second run of sub-01 exits 2."""
    from filelock import FileLock

    folder = tmp_path / "work" / "qalas_bids_0_1_wf"
    folder.mkdir(parents=True)
    with FileLock(str(folder / ".sub-01.lock")):
        second = subprocess.run([*CLI, str(four_subjects), str(tmp_path / "out"), "participant",
                                 "--participant-label", "01", *OPTIONS], cwd=tmp_path,
                                capture_output=True, text=True, timeout=600)
    assert_usage_error(second, r"already processing sub-01 with the work directory")
    assert not (tmp_path / "out" / "sub-01" / "anat").exists()
