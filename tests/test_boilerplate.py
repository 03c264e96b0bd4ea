"""Methods boilerplate generated from what ran."""
import re

from qalas_bids import __version__
from qalas_bids.reports.boilerplate import write_citation_files

RUN = {"entities": {"subject": "01"}, "FitMode": "scan-specific", "B1Source": "sub-01_acq-famp_TB1TFL.nii.gz",
       "FitInfo": {"Device": "cuda:0", "Epochs": 200}, "SequenceTiming": {"vendor": "siemens"}}


def test_citation_files_reflect_settings(tmp_path):
    paths = write_citation_files(tmp_path, {"synth_contrasts": "T1w,FLAIR", "b1_flip_angle": 80}, [RUN])
    assert {p.name for p in paths.values()} == {"CITATION.md", "CITATION.html", "CITATION.bib"}
    assert all(p.parent == tmp_path / "logs" for p in paths.values())
    md = paths["md"].read_text()
    for text in (__version__, "cuda:0", "200 epochs", "siemens timing preset", "trained from scratch",
                 "Siemens TurboFLASH", "80 degrees", "T1w and FLAIR", "Jun et al.", "Kvernby et al.",
                 "Fujita et al."):
        assert text in md, text
    cited = re.findall(r"\[([\d, ]+)\]", md.split("### References")[0])
    n_refs = len(re.findall(r"^\d+\. ", md.split("### References")[1], re.M))
    assert max(int(n) for c in cited for n in c.split(",")) == n_refs == 8
    bib = paths["bib"].read_text()
    assert bib.count("@") == 8 and "jun2023sslqalas" in bib and "paszke2019pytorch" in bib
    html = paths["html"].read_text()
    assert html.startswith("<!DOCTYPE html>") and "<ol>" in html and "<li>" in html


def test_no_b1_and_dictionary_mode(tmp_path):
    run = {**RUN, "FitMode": "dictionary", "B1Source": None}
    md = write_citation_files(tmp_path, {"no_b1": True}, [run])["md"].read_text()
    assert "dictionary matching" in md and "No B1+ map was used" in md
    assert "SSL-QALAS [" not in md.split("### References")[0] or "dictionary" in md


def test_works_without_runs(tmp_path):
    md = write_citation_files(tmp_path, {"fit_mode": "pretrained", "device": "cpu"}, [])["md"].read_text()
    assert "pretrained weights" in md and "cpu" in md
