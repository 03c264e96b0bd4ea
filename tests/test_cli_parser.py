"""Command-line parsing, validators and the Settings object (no processing)."""
import json

import pytest

from qalas_bids.cli import validators as v
from qalas_bids.cli.parser import build_parser, parse_args
from qalas_bids.config import Settings


@pytest.fixture()
def bids(tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    return root


def test_labels_with_or_without_prefix(bids, tmp_path):
    opts = parse_args([str(bids), str(tmp_path / "out"), "participant",
                       "--participant-label", "sub-01", "02", "--session-label", "ses-A"])
    assert opts.participant_label == ["01", "02"]
    assert opts.session_label == ["A"]
    settings = Settings.from_namespace(opts)
    assert settings.participant_labels == ("01", "02") and settings.session_labels == ("A",)


def test_defaults(bids, tmp_path):
    settings = Settings.from_namespace(parse_args([str(bids), str(tmp_path / "out"), "participant",
                                                   "--nprocs", "3"]))
    assert settings.participant_labels is None
    assert settings.fit_mode == "scan-specific" and settings.device == "auto"
    assert settings.work_dir.name == "work"
    assert settings.plugin == "MultiProc"
    assert settings.plugin_args == {"n_procs": 3, "maxtasksperchild": 1, "raise_insufficient": False}
    one = Settings.from_namespace(parse_args([str(bids), str(tmp_path / "o"), "participant", "--nprocs", "1"]))
    assert one.plugin == "Linear"
    assert settings.noise_floor_correction is True


def test_relax_gate_is_repeatable(bids, tmp_path):
    settings = Settings.from_namespace(parse_args([str(bids), str(tmp_path / "out"), "participant",
                                                   "--relax-gate", "b1-median", "--relax-gate", "readout-order",
                                                   "--relax-gate", "b1-median"]))
    assert settings.relaxed_gates == ("b1-median", "readout-order")
    assert Settings.from_namespace(parse_args([str(bids), str(tmp_path / "o"), "participant"])).relaxed_gates == ()


def test_noise_floor_correction_can_be_turned_off(bids, tmp_path):
    from qalas_bids.qalas.fitting.fit_volume import fit_volume
    from qalas_bids.qalas.phantom.digital_brain import make_digital_brain

    settings = Settings.from_namespace(parse_args([str(bids), str(tmp_path / "out"), "participant",
                                                   "--no-noise-floor-correction"]))
    assert settings.noise_floor_correction is False
    brain = make_digital_brain(resolution=4.0, snr=30)
    fits = {flag: fit_volume(brain.signals, brain.b1, brain.brain_mask, brain.timing, method="pretrained",
                             progress=False, noise_floor_correction=flag) for flag in (True, False)}
    assert fits[True].info["noise_floor_correction"]["applied"] is True
    off = fits[False].info["noise_floor_correction"]
    assert off["applied"] is False and "--no-noise-floor-correction" in off["reason"]
    assert not (fits[True].maps["t1"] == fits[False].maps["t1"]).all()


@pytest.mark.parametrize("words", [["T1w,FLAIR"], ["T1w", "FLAIR"], ["T1w,FLAIR", "T1w"]])
def test_synth_contrasts_space_or_comma_separated(bids, tmp_path, words):
    settings = Settings.from_namespace(parse_args([str(bids), str(tmp_path / "out"), "participant",
                                                   "--synth-contrasts", *words]))
    assert settings.synth_contrasts == ("T1w", "FLAIR")


def test_settings_frozen_and_json(bids, tmp_path):
    settings = Settings.from_namespace(parse_args([str(bids), str(tmp_path / "out"), "participant",
                                                   "--epochs", "5", "--mem", "8G"]))
    with pytest.raises(AttributeError):
        settings.fit_mode = "dictionary"
    assert settings.ssl_options == {"epochs": 5}
    assert settings.mem_gb == 8
    path = settings.write_json(tmp_path / "logs")
    data = json.loads(path.read_text())
    assert data["bids_dir"] == str(bids) and data["epochs"] == 5 and data["run_uuid"] in path.name


def test_plugin_yaml(bids, tmp_path):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: SLURMGraph\nplugin_args:\n  sbatch_args: '--time=1:00:00'\n")
    settings = Settings.from_namespace(parse_args([str(bids), str(tmp_path / "out"), "participant",
                                                   "--use-plugin", str(plugin)]))
    assert settings.plugin == "SLURMGraph"
    assert settings.plugin_args == {"sbatch_args": "--time=1:00:00"}


@pytest.mark.parametrize("argv_tail, message", [
    (["--nprocs", "0"], "positive integer"),
    (["--participant-label", "sub_01!"], "invalid sub label"),
    (["--device", "gpu"], "invalid device"),
    (["--mem", "lots"], "memory"),
    (["--fit-mode", "fast"], "invalid choice"),
    (["--no-b1", "--b1-flip-angle", "80"], "--no-b1"),
    (["--synth-contrasts", "T1w,MPRAGE"], "invalid choice(s) MPRAGE"),
    (["--no-b1", "--b1-min-coverage", "0.5"], "--no-b1"),
    (["--b1-min-coverage", "95"], "fraction between 0 and 1"),
    (["--relax-gate", "b1-everything"], "invalid choice"),
    (["--synth-params", "{synth}", '{"T1w": {"RepetitionTime": -1}}'], "RepetitionTime must be in (0, 30]"),
    (["--synth-params", "{synth}", '{"FLAIR": {"RepetitionTime": 2, "InversionTime": 3}}'],
     "must end before RepetitionTime"),
    (["-q", "-v"], "choose one of -q/--quiet and -v/--verbose"),
])
def test_usage_errors_exit_2(bids, tmp_path, capsys, argv_tail, message):
    """Each bad option exits 2 at parse time (before any work) with its message."""
    if "{synth}" in argv_tail:  # the JSON text goes into a file given to --synth-params
        synth = tmp_path / "synth.json"
        synth.write_text(argv_tail[-1])
        argv_tail = [a.replace("{synth}", str(synth)) for a in argv_tail[:-1]]
    with pytest.raises(SystemExit) as exc:
        parse_args([str(bids), str(tmp_path / "out"), "participant", *argv_tail])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("inside", ["", "sub-01", "sub-01/anat", "derivatives", "sourcedata/x"])
def test_output_inside_raw_data_refused(bids, capsys, inside):
    with pytest.raises(SystemExit) as exc:
        parse_args([str(bids), str(bids / inside), "participant"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "inside the raw BIDS dataset" in err
    assert "derivatives/qalas-bids" in err  # says where it may go


def test_output_in_bids_derivatives_folder_accepted(bids):
    opts = parse_args([str(bids), str(bids / "derivatives" / "qalas-bids"), "participant",
                       "-w", str(bids.parent / "work")])
    assert opts.output_dir == (bids / "derivatives" / "qalas-bids").absolute()


def test_output_inside_bids_and_not_bids(bids, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(SystemExit):
        parse_args([str(plain), str(tmp_path / "out"), "participant"])
    assert "dataset_description.json" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ('{"qalas": "01"}', "must map entity names"),
    ('{"anat": {"session": "01"}}', "unknown key"),
    ("{not json", "not valid JSON"),
])
def test_bad_bids_filter_file_exits_2(bids, tmp_path, capsys, content, message):
    bad = tmp_path / "filter.json"
    bad.write_text(content)
    with pytest.raises(SystemExit) as exc:
        parse_args([str(bids), str(tmp_path / "out"), "participant", "--bids-filter-file", str(bad)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_memory_units():
    assert v.memory_gb("16G") == 16 and v.memory_gb("16GB") == 16
    assert v.memory_gb("8000M") == pytest.approx(8) and v.memory_gb("1T") == 1000


def test_help_lists_groups_and_version(capsys):
    text = build_parser().format_help()
    for option in ("--participant-label", "--bids-filter-file", "--fit-mode", "--device", "--no-b1",
                   "--use-plugin", "--stop-on-first-crash", "--notrack", "--reports-only",
                   "--boilerplate-only", "--omp-nthreads", "--vendor-preset", "--b1-flip-angle"):
        assert option in text
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0 and "qalas-bids" in capsys.readouterr().out
