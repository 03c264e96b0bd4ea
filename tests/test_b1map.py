"""B1 preparation: relative scaling, world-coordinate resampling, clipping and masking."""
import nibabel as nib
import numpy as np
import pytest

from qalas_bids.qalas.b1.kinds import relative_b1_from_famp
from qalas_bids.qalas.b1.prepare import B1_RANGE, b1_in_qalas_space, clip_b1, mask_b1
from qalas_bids.qalas.spaces.resample import resample_b1_to_qalas
from qalas_bids.qalas.errors import QalasInputError


def smooth_field(xyz):
    """A smooth relative-B1 field defined in world coordinates (mm)."""
    x, y, z = xyz
    return 1.0 + 0.002 * x - 0.0015 * y + 0.001 * z


def world_coords(shape, affine):
    ijk = np.indices(shape).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    return xyz.reshape((3,) + tuple(shape))


def qalas_grid():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-40, -48, -30]
    return nib.Nifti1Image(np.zeros((40, 48, 30, 5), np.float32), affine)


def rotated_b1_grid():
    """Coarser (4 mm), rotated by 90 degrees in-plane and shifted: voxel indices do not match."""
    rot = np.array([[0, -4.0, 0], [4.0, 0, 0], [0, 0, 4.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot
    affine[:3, 3] = [60, -60, -40]
    return affine, (32, 32, 22)


def test_relative_b1_uses_nominal_angle():
    famp = np.array([800.0, 720.0, 880.0])
    assert np.allclose(relative_b1_from_famp(famp, 80), [1.0, 0.9, 1.1])
    assert np.allclose(relative_b1_from_famp(famp, 90), famp / 900)
    with pytest.raises(QalasInputError):
        relative_b1_from_famp(famp, 0)
    with pytest.raises(QalasInputError):
        relative_b1_from_famp(np.array([np.nan]), 80)


def test_resample_uses_both_affines():
    qalas = qalas_grid()
    b1_affine, b1_shape = rotated_b1_grid()
    b1 = smooth_field(world_coords(b1_shape, b1_affine)).astype(np.float32)
    out = resample_b1_to_qalas(nib.Nifti1Image(b1, b1_affine), qalas)
    assert out.shape == qalas.shape[:3]
    assert np.allclose(out.affine, qalas.affine)
    truth = smooth_field(world_coords(qalas.shape[:3], qalas.affine))
    inner = (slice(4, -4),) * 3  # away from the B1 field-of-view border
    got = np.asarray(out.dataobj)[inner]
    # a linear field is reproduced exactly by linear interpolation (float32 precision)
    assert np.max(np.abs(got - truth[inner])) < 1e-4
    # a voxel-index (affine-ignoring) resampling would be far off
    assert np.max(np.abs(truth[inner] - truth[inner][::-1])) > 0.05


def test_clip_and_mask():
    b1 = np.array([[[0.3, 0.9, 1.6]]])
    assert np.allclose(clip_b1(b1), [[[B1_RANGE[0], 0.9, B1_RANGE[1]]]])
    masked = mask_b1(b1, np.array([[[True, False, True]]]))
    assert np.allclose(masked, [[[0.3, 0.0, 1.6]]])


def test_full_preparation_from_famp():
    qalas = qalas_grid()
    b1_affine, b1_shape = rotated_b1_grid()
    rel = smooth_field(world_coords(b1_shape, b1_affine))
    famp = nib.Nifti1Image((rel * 800).astype(np.float32), b1_affine)
    head = np.zeros(qalas.shape[:3], bool)
    head[8:32, 8:40, 6:24] = True
    img, info = b1_in_qalas_space(famp, 80.0, qalas, head_mask=head)
    data = np.asarray(img.dataobj)
    truth = np.clip(smooth_field(world_coords(qalas.shape[:3], qalas.affine)), *B1_RANGE)
    assert np.all(data[~head] == 0)
    assert np.max(np.abs(data[head] - truth[head])) < 1e-3
    assert data[head].min() >= B1_RANGE[0] and data[head].max() <= B1_RANGE[1]
    assert info["FieldOfViewCoverage"] == pytest.approx(1.0)


def test_non_overlapping_b1_is_an_input_error():
    qalas = qalas_grid()
    far = np.eye(4) * 4
    far[3, 3] = 1
    far[:3, 3] = [1000, 1000, 1000]
    famp = nib.Nifti1Image(np.full((10, 10, 10), 800, np.float32), far)
    with pytest.raises(QalasInputError, match="covers only 0% of the head.*--b1-min-coverage"):
        b1_in_qalas_space(famp, 80.0, qalas)


def _uniform_famp(qalas, value: float, shape=(22, 26, 17)):
    """A famp map on a grid that covers the whole QALAS grid (4 mm voxels)."""
    affine = qalas.affine.copy()
    affine[:3, :3] *= 2
    affine[:3, 3] -= 4
    return nib.Nifti1Image(np.full(shape, value, np.float32), affine)


@pytest.mark.parametrize("value, angle, pattern", [
    (0.0, 80.0, r"median of 0.00 in the head"),
    (800.0, 8.0, r"median of 10.00.*about 80 deg: pass it with --b1-flip-angle"),
])
def test_implausible_b1_is_an_input_error(value, angle, pattern):
    """An all-zero famp map, or a sidecar FlipAngle of 8 instead of 80, is refused."""
    qalas = qalas_grid()
    with pytest.raises(QalasInputError, match=pattern):
        b1_in_qalas_space(_uniform_famp(qalas, value), angle, qalas)
    img, info = b1_in_qalas_space(_uniform_famp(qalas, 800.0), 80.0, qalas)  # the same map, right angle
    assert info["MedianUnclippedInHead"] == pytest.approx(1.0) and info["FractionPlausible"] == 1.0


def test_partial_coverage_is_refused_unless_allowed():
    qalas = qalas_grid()
    famp = _uniform_famp(qalas, 800.0, shape=(22, 26, 8))  # misses the top of the grid
    head = np.ones(qalas.shape[:3], bool)
    with pytest.raises(QalasInputError, match=r"covers only \d+% of the head"):
        b1_in_qalas_space(famp, 80.0, qalas, head_mask=head)
    _, info = b1_in_qalas_space(famp, 80.0, qalas, head_mask=head, min_coverage=0.3)
    assert 0.3 < info["FieldOfViewCoverage"] < 0.95
