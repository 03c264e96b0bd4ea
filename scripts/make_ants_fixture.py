"""Write tests/data/ants_syn_*: a real ANTs (antspyx) SyN composite transform, the
sMRIPrep/fMRIPrep ``from-T1w_to-<tpl>_mode-image_xfm.h5`` kind, and ANTs' own resampling
of the moving image through it, for tests/test_ants_transforms.py.

Not part of the package or the tests' requirements: antspyx pins numpy < 2.4 and scipy
< 1.16 (docs/spaces.md), so run it in a separate environment:

    python3 -m venv /tmp/antsenv && /tmp/antsenv/bin/pip install antspyx==0.6.3
    .venv/bin/qalas-bids-demo-data /tmp/ants-demo --with-t1w --seed 1
    /tmp/antsenv/bin/python scripts/make_ants_fixture.py /tmp/ants-demo tests/data

Small grids (fixed: the shipped template brain at 8 mm, moving: the demo T1w at 6 mm)
keep the files under 1 MB.
"""
import shutil
import sys
from pathlib import Path

import ants

HERE = Path(__file__).resolve().parents[1]
TEMPLATE = HERE / "qalas_bids/data/templateflow/tpl-MNI152NLin2009cAsym/tpl-MNI152NLin2009cAsym_res-02_desc-brain_T1w.nii.gz"


def main(demo: Path, out: Path) -> None:
    fixed = ants.resample_image(ants.image_read(str(TEMPLATE)), (8, 8, 8), use_voxels=False, interp_type=0)
    t1w = next((demo / "sub-01").rglob("sub-01*_T1w.nii.gz"))
    moving = ants.resample_image(ants.image_read(str(t1w)), (6, 6, 6), use_voxels=False, interp_type=0)
    reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN", reg_iterations=(40, 20, 0),
                            write_composite_transform=True, outprefix=str(out / "ants_syn_"), random_seed=1)
    composite = Path(reg["fwdtransforms"])  # template points -> T1w points, as sMRIPrep writes it
    shutil.move(composite, out / "ants_syn_from-T1w_to-tpl_xfm.h5")
    Path(reg["invtransforms"]).unlink()
    warped = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=[str(out / "ants_syn_from-T1w_to-tpl_xfm.h5")],
                                   interpolator="linear")
    ants.image_write(moving, str(out / "ants_syn_moving.nii.gz"))
    ants.image_write(warped, str(out / "ants_syn_warped-by-ants.nii.gz"))
    print(f"ANTs {ants.__version__}: wrote {sorted(p.name for p in out.glob('ants_syn_*'))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
