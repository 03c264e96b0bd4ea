"""Throughput changes that must not change results: ISA-L gzip I/O, inputs read once,
the field-of-view mask from affines and morphology on bounding boxes."""
import gzip

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from qalas_bids.qalas.spaces.resample import field_of_view_mask, resample_b1_to_qalas
from qalas_bids.qalas.tissue.masking import bounding_box
from qalas_bids.qalas.fitting.uncertainty import BACKGROUND_DILATION, _dilate
from qalas_bids.utils.nifti_io import read_array, read_image, write_image, write_images


def _image(shape=(7, 8, 9), dtype=np.float32, seed=0) -> nib.Nifti1Image:
    data = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 7.0]
    return nib.Nifti1Image(data, affine)


@pytest.mark.parametrize("shape, dtype", [((7, 8, 9), np.float32), ((5, 6, 4, 5), np.float32), ((6, 5, 4), np.uint8)])
def test_round_trip_and_plain_gzip_readers(tmp_path, shape, dtype):
    img = _image(shape, dtype)
    path = write_image(img, tmp_path / "x.nii.gz")
    with gzip.open(path) as fobj:  # an ordinary gzip stream
        assert fobj.read(4) == np.int32(348).tobytes()
    for loaded in (read_image(path), nib.load(path)):
        assert np.array_equal(np.asarray(loaded.dataobj), np.asarray(img.dataobj))
        assert np.allclose(loaded.affine, img.affine) and loaded.get_data_dtype() == np.dtype(dtype)
    assert np.array_equal(read_array(write_image(img, tmp_path / "x.nii")), np.asarray(img.dataobj, np.float32))


def test_same_image_same_bytes_and_parallel_writes(tmp_path):
    """No time stamp in the gzip header: nipype's content hashes stay valid on a rerun."""
    imgs = [_image(seed=i) for i in range(4)]
    first = write_images((img, tmp_path / f"a{i}.nii.gz") for i, img in enumerate(imgs))
    second = write_images([(img, tmp_path / f"b{i}.nii.gz") for i, img in enumerate(imgs)], threads=1)
    for a, b, img in zip(first, second, imgs):
        assert open(a, "rb").read() == open(b, "rb").read()
        assert np.array_equal(read_array(a), np.asarray(img.dataobj))


def test_nifti2_and_damaged_files(tmp_path):
    img = _image()
    two = nib.Nifti2Image(np.asarray(img.dataobj), img.affine)
    path = write_image(two, tmp_path / "two.nii.gz")
    assert isinstance(read_image(path), nib.Nifti2Image)
    assert np.array_equal(read_array(path), np.asarray(img.dataobj))
    raw = open(path, "rb").read()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(Exception):
        read_image(broken)


@pytest.mark.parametrize("shift", [(0.0, 0.0, 0.0), (13.3, -7.7, 21.1), (-30.0, 0.4, -12.5)])
def test_field_of_view_mask_matches_resampling_ones(shift):
    """The affine-only mask equals what linear resampling of an all-ones map gives."""
    qalas = nib.Nifti1Image(np.zeros((40, 44, 36), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]) @ np.array(
        [[1, 0, 0, -20], [0, 1, 0, -22], [0, 0, 1, -18], [0, 0, 0, 1.0]]))
    angle = np.radians(6.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    b1_affine = np.eye(4)
    b1_affine[:3, :3] = rot @ np.diag([-3.5, 3.5, 4.0])[:, [0, 2, 1]]
    b1_affine[:3, 3] = np.array([55.0, -40.0, -30.0]) + np.asarray(shift)
    b1 = nib.Nifti1Image(np.ones((24, 18, 26), np.float32), b1_affine)
    expected = np.asarray(resample_b1_to_qalas(b1, qalas).dataobj) > 0.999
    got = field_of_view_mask(b1, qalas)
    assert 0 < got.sum() and np.array_equal(got, expected)


def test_dilation_on_the_bounding_box_is_exact():
    rng = np.random.default_rng(3)
    mask = np.zeros((30, 28, 26), bool)
    mask[8:20, 5:17, 3:24] = rng.random((12, 12, 21)) > 0.3
    mask[0, 0, 0] = True  # touches the grid edge
    full = ndimage.binary_dilation(mask, iterations=BACKGROUND_DILATION)
    assert np.array_equal(_dilate(mask, BACKGROUND_DILATION), full)
    box = bounding_box(mask, 2)
    assert all(s.start >= 0 and s.stop <= n for s, n in zip(box, mask.shape))
    assert not _dilate(np.zeros((4, 4, 4), bool), 3).any()


def test_inputs_are_read_once_and_written_for_the_workflow(tmp_path):
    """check_run_inputs does every data check; write_run_inputs gives the workflow's inputs."""
    from qalas_bids.bids import collect_qalas_runs
    from qalas_bids.bids.inputs_check import check_run_inputs, write_run_inputs
    from qalas_bids.demo.dataset import write_demo_dataset
    from qalas_bids.qalas.tissue.masking import compute_head_mask

    root = tmp_path / "bids"
    write_demo_dataset(root, subjects=("01",), sessions=("01",), runs=(1,), snr=60, resolution=4.0)
    (run,) = collect_qalas_runs(root)
    checked = check_run_inputs(run)
    assert checked.data.shape[-1] == 5 and checked.warnings == ()
    assert np.array_equal(checked.mask, compute_head_mask(checked.data))
    assert checked.b1 is not None and not checked.b1[~checked.mask].any()
    assert np.all((checked.b1[checked.mask] >= 0.65) & (checked.b1[checked.mask] <= 1.35))
    first = write_run_inputs(checked, tmp_path / "a")
    again = write_run_inputs(check_run_inputs(run), tmp_path / "b")
    for a, b in ((first.qalas_file, again.qalas_file), (first.mask_file, again.mask_file), (first.b1_file, again.b1_file)):
        assert open(a, "rb").read() == open(b, "rb").read()
    assert np.array_equal(read_array(first.qalas_file), checked.data)
    assert first.b1_info["FieldOfViewCoverage"] >= 0.95
    assert check_run_inputs(run, use_b1=False).b1 is None


def test_crlb_condition_shortcut_matches_eigenvalues_everywhere(monkeypatch):
    """Only voxels whose Frobenius bound exceeds the limit need eigenvalues: same result."""
    import torch

    from qalas_bids.qalas.fitting import uncertainty
    from qalas_bids.qalas.physics.timing import get_preset

    rng = np.random.default_rng(1)
    n = 20000
    args = (rng.uniform(0.05, 9.9, n), rng.uniform(0.002, 4.9, n), rng.uniform(0, 1, n),
            rng.uniform(0.5, 1, n), rng.uniform(0.65, 1.35, n), get_preset("siemens"), 0.01)
    args[2][:200] = 0.0  # singular Fisher matrices
    fast = uncertainty.crlb_std(*args, device="cpu")
    monkeypatch.setattr(torch.linalg, "matrix_norm", lambda a: torch.full(a.shape[:-2], float("inf"), dtype=a.dtype))
    exact = uncertainty.crlb_std(*args, device="cpu")
    assert 0 < fast["singular"].sum() < n
    for key in fast:
        assert np.array_equal(fast[key], exact[key]), key


def test_figures_drawn_in_worker_processes(tmp_path):
    from qalas_bids.reports.figures import FigureBatch, loss_curve

    batch = FigureBatch(workers=2)
    paths = [batch.add(loss_curve, tmp_path / f"loss{i}.png", np.linspace(1, 0.1, 5 + i)) for i in range(3)]
    assert not any(p.exists() for p in paths)
    assert batch.draw() == paths and all(p.stat().st_size > 0 for p in paths)
    assert batch.jobs == [] and batch.draw() == []


def test_order_check_thread_is_quiet_but_other_threads_warn(caplog):
    """The quick fit's model warnings are dropped in its own thread only."""
    import logging
    import threading

    from qalas_bids.qalas.fitting.readout_order import _quiet_single_threaded

    logger = logging.getLogger("qalas_bids")
    entered, release = threading.Event(), threading.Event()

    def quiet_fit():
        with _quiet_single_threaded():
            logger.warning("model trained for another timing")
            entered.set()
            release.wait(5)

    with caplog.at_level(logging.WARNING, logger="qalas_bids"):
        worker = threading.Thread(target=quiet_fit)
        worker.start()
        entered.wait(5)
        logger.warning("B1 covers 90% of the head")
        release.set()
        worker.join()
    messages = [r.getMessage() for r in caplog.records]
    assert "B1 covers 90% of the head" in messages and "model trained for another timing" not in messages


def test_fork_map_order_closures_and_errors():
    from qalas_bids.qalas.errors import QalasInputError
    from qalas_bids.utils.parallel import fork_map

    big = np.arange(1_000_000, dtype=np.float64)  # shared by the fork, never pickled
    assert fork_map(lambda i: float(big[i * 1000]), 5, workers=2) == [0.0, 1000.0, 2000.0, 3000.0, 4000.0]
    assert fork_map(lambda i: i * i, 3, workers=1) == [0, 1, 4]

    def fails_on_two(i):
        if i == 2:
            raise QalasInputError("sub-03: the QALAS volumes are not in readout order")
        return i

    with pytest.raises(QalasInputError, match="readout order"):
        fork_map(fails_on_two, 4, workers=2)
