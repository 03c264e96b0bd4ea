"""Participant QC report built from a fake derivatives folder (digital brain, 2 mm)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.testing.fake_derivatives import write_fake_derivatives
from qalas_bids.reports.participant import make_participant_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# Headless, sandbox off (containers run as root), every background network feature off.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
                  "--disable-extensions", "--no-pings", "--metrics-recording-only", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("deriv") / "out"
    write_fake_derivatives(out, "01", warnings=("Timing: esp taken from the preset",))
    write_fake_derivatives(out, "02", resolution=3.0, with_b1=False, with_synthetic=False, seed=1)
    return out


@pytest.fixture(scope="module")
def report(output_dir):
    return make_participant_report(output_dir, "sub-01")


def image_sources(html_path: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html_path.read_text())


def test_report_written_at_root_with_figures(output_dir, report):
    assert report == output_dir.absolute() / "sub-01.html"
    sources = image_sources(report)
    assert len(sources) >= 7  # maps, mask, B1, uncertainty, histograms, synthetic, fit log
    for src in sources:
        assert src.startswith("sub-01/figures/sub-01_desc-")
        assert (output_dir / src).stat().st_size > 1000, src


def test_report_contents(report):
    text = report.read_text()
    for expected in ("Quantitative maps", "B1+ map (registration check)", "Residual and uncertainty",
                     "Tissue values", "Synthetic contrasts", "Fit log", "Sequence timing", "Methods",
                     "Timing: esp taken from the preset", "SSL-QALAS", "Masks", "Fit flags"):
        assert expected in text, expected
    # per-tissue median table: WM T1 close to the digital brain's 0.85 s
    wm_row = re.search(r"<th class='l'>WM</th><td>\d+</td><td>([\d.]+) \[", text)
    assert wm_row and 0.8 < float(wm_row.group(1)) < 1.0


def test_missing_pieces_are_reported_not_fatal(output_dir):
    text = make_participant_report(output_dir, "02").read_text()
    assert "No B1+ map was used" in text
    assert "No synthetic images were written" in text


def test_unknown_subject_is_a_clear_error(output_dir):
    with pytest.raises(QalasInputError, match="no T1 map of sub-99"):
        make_participant_report(output_dir, "99")


def _dump_dom(html_path: Path, tmp_path: Path) -> str:
    result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                             "--virtual-time-budget=10000", "--dump-dom", html_path.as_uri()],
                            capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", result.stdout)
    assert body, result.stderr[-2000:]
    return body.group(0)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)")
def test_every_image_loads_in_headless_chromium(output_dir, report, tmp_path):
    body = _dump_dom(report, tmp_path)
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    broken = re.search(r'data-images-broken="([^"]*)"', body).group(1)
    assert total == len(image_sources(report)) and broken == ""
    # negative control: the same check notices a missing figure
    copy = output_dir / "sub-01-copy.html"
    copy.write_text(report.read_text().replace("desc-maps_T1map.png", "desc-missing_T1map.png"))
    body = _dump_dom(copy, tmp_path)
    assert "desc-missing_T1map.png" in re.search(r'data-images-broken="([^"]*)"', body).group(1)
    copy.unlink()


def test_report_lists_only_the_crash_files_of_its_own_run(tmp_path):
    from qalas_bids.testing.fake_derivatives import write_fake_derivatives
    from qalas_bids.reports.participant import make_participant_report

    out = tmp_path / "out"
    write_fake_derivatives(out, "01", resolution=4.0, with_synthetic=False)
    for uuid, name in (("20260101-000000_old", "crash-old.txt"), ("20260102-000000_new", "crash-new.txt")):
        (out / "sub-01" / "log" / uuid).mkdir(parents=True)
        (out / "sub-01" / "log" / uuid / name).write_text(f"Traceback of {name}")
    page = make_participant_report(out, "01", run_uuid="20260102-000000_new").read_text()
    assert "crash-new.txt" in page and "crash-old.txt" not in page
    page = make_participant_report(out, "01", run_uuid="20260103-000000_clean").read_text()
    assert "No crash files in this run" in page
