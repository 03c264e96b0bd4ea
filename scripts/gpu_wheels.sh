#!/usr/bin/env bash
# Fetch (here, where PyPI is reachable) the wheels that the offline GPU machine lacks, for
# its Python 3.12 with CUDA torch already installed, into .whl/ (git-ignored). Versions are
# those of this checkout's .venv, so the GPU tier runs the same libraries as `make test`.
# Then: device run with carry [".whl"] and `make gpu-test GPU_PYTHON=python3`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make install
# Not on the GPU image (its own numpy/scipy/pandas/torch/matplotlib/... are used as they are;
# docopt, needed only by the num2words command line, has no wheel).
PACKAGES="acres astor bids-validator bidsschematools ci-info frozendict etelemetry importlib-resources looseversion nibabel
nilearn nipype num2words pathlib-abc platformdirs prov puremagic pybids pydot rdflib sqlalchemy
templateflow traits tzdata universal-pathlib"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
specs=()
for name in $PACKAGES; do
    version=$({ .venv/bin/python -m pip show "$name" 2>/dev/null || true; } | awk '/^Version:/ {print $2}')
    specs+=("${name}${version:+==$version}")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    -d .whl "${specs[@]}"
echo "wheels in .whl/: $(ls .whl | wc -l) files, $(du -sh .whl | cut -f1) (the device tool carries at most 64 MiB)"
