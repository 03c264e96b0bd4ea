#!/usr/bin/env bash
# Real container test (make container-test, called by .ci/run): build the project's own
# Dockerfile with podman on a Debian base made locally with debootstrap (CPU torch from
# the machine's local wheel folder), run the image as a BIDS App on a small demo dataset
# as a non-root UID:GID, and check outputs, their owner, the input, --version, --help,
# a usage error and the OCI-archive export used for Apptainer (docs/containers.md).
#
# Needs root (rootful podman, debootstrap) on Debian 12; podman, debootstrap and runc are
# installed with apt-get when missing. Leaves qalas-bids:latest and qalas-bids:<version>
# (and the cached base image) in podman's store.
#
# Settings (environment):
#   QALAS_BASE_IMAGE    base image to make/reuse   (default localhost/debian-py:bookworm)
#   QALAS_REBUILD_BASE  1: remake the base even if it is in podman's store
#   QALAS_TORCH_WHEELS  folder holding the CPU torch wheel (default: pip's find-links)
#   QALAS_TEST_UID/GID  user the app runs as         (default 1000:1000)
#   QALAS_KEEP_WORK     1: keep the temporary folder (always kept on failure)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

SUITE=bookworm
BASE_IMAGE="${QALAS_BASE_IMAGE:-localhost/debian-py:${SUITE}}"
IMAGE=qalas-bids
RUN_UID="${QALAS_TEST_UID:-1000}"
RUN_GID="${QALAS_TEST_GID:-1000}"
HOST_CA=/etc/ssl/certs/ca-certificates.crt

T_START=$SECONDS
log() { printf '[container-test] %s\n' "$*" >&2; }
failures=()
fail() { failures+=("$*"); printf '[container-test] CHECK FAILED: %s\n' "$*" >&2; }
die() {
    printf '[container-test] ERROR: %s\n' "$*" >&2
    printf '[container-test] FAIL (setup error after %ss)\n' "$((SECONDS - T_START))" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root (rootful podman and debootstrap); e.g. sudo make container-test"

WORK="$(mktemp -d /tmp/qalas-container-test.XXXXXX)"
chmod 755 "$WORK"
finish() {
    rc=$?
    if [ "$rc" -eq 0 ] && [ "${QALAS_KEEP_WORK:-0}" != 1 ]; then
        rm -rf "$WORK"
    else
        log "kept $WORK (logs: build.log, run.log)"
    fi
}
trap finish EXIT

# ------------------------------------------------------------------------- tools
need_pkgs=()
command -v podman >/dev/null 2>&1 || need_pkgs+=(podman)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || need_pkgs+=(runc)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${need_pkgs[*]} and no apt-get to install them"
    log "installing ${need_pkgs[*]} with apt-get"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman debootstrap runc || die "apt-get install podman debootstrap runc failed"
fi
for tool in podman debootstrap runc; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || die "$tool is still missing after apt-get"
done
export PATH="$PATH:/usr/sbin:/sbin"

# crun fails on these machines (cgroup v1 hybrid) and podman's default ulimits cannot be
# set without CAP_SYS_RESOURCE: runc, cgroupfs and lower ulimits (shared/CONTAINERS_CI.md).
cat > "$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"
podman info >/dev/null 2>"$WORK/podman-info.err" || die "podman info failed: $(cat "$WORK/podman-info.err")"

VERSION="$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' qalas_bids/__init__.py)"
[ -n "$VERSION" ] || die "no __version__ in qalas_bids/__init__.py"
log "qalas-bids $VERSION, podman $(podman version --format '{{.Client.Version}}'), base $BASE_IMAGE"

# ------------------------------------------------------------------ base image
debian_mirror() {
    # First URIs of a deb822 stanza serving the suite itself (not -security/-updates).
    local f mirror
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        mirror="$(awk -v suite="$SUITE" '
            function flush() { if (uri != "" && ok && !found) { print uri; found = 1 } uri = ""; ok = 0 }
            /^[ \t]*$/ { flush(); next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { flush() }' "$f")"
        if [ -n "$mirror" ]; then echo "$mirror"; return 0; fi
    done
    # one-line format as a fallback
    awk -v suite="$SUITE" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i == suite) { u = $(i-1); if (u !~ /^\[/) { print u; exit } } }' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1
}

T0=$SECONDS
if [ "${QALAS_REBUILD_BASE:-0}" != 1 ] && podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE is in podman's store: reusing it (QALAS_REBUILD_BASE=1 remakes it)"
    base_note="cached"
else
    case "$BASE_IMAGE" in localhost/*) ;; *) die "QALAS_BASE_IMAGE must be a localhost/... name (no registry here)";; esac
    MIRROR="$(debian_mirror)"
    [ -n "$MIRROR" ] || die "no Debian mirror for $SUITE in /etc/apt/sources.list.d/*.sources or sources.list"
    log "debootstrap $SUITE from $MIRROR"
    ROOTFS="$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$ROOTFS" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
        || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    tar -C "$ROOTFS" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null \
        || die "podman import of the debootstrap root failed"
    rm -rf "$ROOTFS"
    base_note="debootstrap"
fi
T_BASE=$((SECONDS - T0))
base_py="$(podman run --rm "$BASE_IMAGE" python3 -c 'import os, sys, ensurepip; assert os.path.isdir("/mnt"); print("%d%d" % sys.version_info[:2])')" \
    || die "base image $BASE_IMAGE has no working python3 with ensurepip (python3-venv) or no /mnt"

# ---------------------------------------------------------------- torch wheel
# The CPU torch wheel `make test` uses lies in a local folder named by pip's find-links.
find_torch_wheel() {
    local dirs dir wheel py
    if [ -n "${QALAS_TORCH_WHEELS:-}" ]; then
        dirs="$QALAS_TORCH_WHEELS"
    else
        py="$ROOT/.venv/bin/python"; [ -x "$py" ] || py="$(command -v python3 || echo python3)"
        dirs="$( { "$py" -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'$/\1/p"
                   echo "${PIP_FIND_LINKS:-}"   # and the files themselves, when pip is missing
                   sed -n 's/^[ \t]*find[-_]links[ \t]*=[ \t]*//p' /etc/pip.conf /etc/xdg/pip/pip.conf \
                       "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" 2>/dev/null
                 } | tr ' ' '\n' | sed 's#^file://##' | awk 'NF && !seen[$0]++')" || true
    fi
    for dir in $dirs; do
        [ -d "$dir" ] || continue
        wheel="$(ls "$dir"/torch-*-cp"$base_py"-cp"$base_py"-*linux*_x86_64.whl 2>/dev/null | sort -V | tail -n 1)"
        if [ -n "$wheel" ]; then echo "$wheel"; return 0; fi
    done
    return 1
}
TORCH_WHEEL="$(find_torch_wheel)" || die "no local torch wheel for cp$base_py (looked in pip's find-links; set QALAS_TORCH_WHEELS=DIR). Torch from PyPI would be the 5 GB CUDA build."
TORCH_VERSION="$(basename "$TORCH_WHEEL" | cut -d- -f2)"
WHEEL_DIR="$(dirname "$TORCH_WHEEL")"
log "torch: $TORCH_WHEEL (torch==$TORCH_VERSION)"

# --------------------------------------------------------------------- build
# Build-only mounts, on paths the base already has (no empty mount point is left behind).
mounts=(-v "$WHEEL_DIR:/mnt:ro")
if [ -f "$HOST_CA" ]; then
    mounts+=(-v "$HOST_CA:$HOST_CA:ro")   # TLS interception: host CAs for this build only
fi
VCS_REF="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
old_image="$(podman image inspect --format '{{.Id}}' "$IMAGE:latest" 2>/dev/null || true)"
log "podman build (log: $WORK/build.log)"
T0=$SECONDS
set +e
podman build "${mounts[@]}" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg TORCH_SPEC="torch==$TORCH_VERSION" \
    --build-arg TORCH_FIND_LINKS=/mnt \
    --build-arg VERSION="$VERSION" \
    --build-arg BUILD_DATE="$BUILD_DATE" \
    --build-arg VCS_REF="$VCS_REF" \
    --build-arg TEMPLATEFLOW_PREFETCH="" \
    -t "$IMAGE:latest" -t "$IMAGE:$VERSION" -f Dockerfile . 2>&1 | tee "$WORK/build.log"
build_rc=${PIPESTATUS[0]}
set -e
T_BUILD=$((SECONDS - T0))
[ "$build_rc" -eq 0 ] || die "podman build failed (exit $build_rc, see build log above)"
IMAGE_SIZE="$(podman image inspect --format '{{.Size}}' "$IMAGE:latest")"
# The previous qalas-bids:latest, now untagged, goes (with its own layers; the build cache
# stays), so that re-runs do not pile up images.
if [ -n "$old_image" ] && [ "$old_image" != "$(podman image inspect --format '{{.Id}}' "$IMAGE:latest")" ] \
   && [ -z "$(podman image inspect --format '{{join .RepoTags ","}}' "$old_image" 2>/dev/null)" ]; then
    podman rmi "$old_image" >/dev/null 2>&1 && log "removed the previous image ${old_image:0:12}" \
        || log "could not remove the previous image ${old_image:0:12} (in use?)"
fi

# The build-only mounts must not have left anything in the image.
podman run --rm --entrypoint /bin/sh "$IMAGE:latest" -c \
    'test -z "$(ls -A /mnt)" && test ! -e /src && test ! -e /opt/qalas-build'  \
    || fail "build mounts or build-stage files left in the image (/mnt not empty, /src or /opt/qalas-build present)"
torch_info="$(podman run --rm --entrypoint python "$IMAGE:latest" -c 'import torch; print(torch.__version__, torch.version.cuda)')" \
    || fail "torch does not import in the image"
log "image torch: $torch_info"
# CPU torch from the wheel, no CUDA; the build's CUDA assertion is off for a base without torch
[ "$torch_info" = "$TORCH_VERSION None" ] || fail "image torch is '$torch_info', expected '$TORCH_VERSION None' (the CPU wheel)"
label() { podman image inspect --format "{{index .Labels \"org.opencontainers.image.$1\"}}" "$IMAGE:latest"; }
[ "$(label version)" = "$VERSION" ] || fail "OCI label version is '$(label version)', expected $VERSION"
[ "$(label created)" = "$BUILD_DATE" ] || fail "OCI label created is '$(label created)', expected $BUILD_DATE (stale cache?)"
[ "$(label revision)" = "$VCS_REF" ] || fail "OCI label revision is '$(label revision)', expected $VCS_REF"
[ "$(label base.name)" = "$BASE_IMAGE" ] || fail "OCI label base.name is '$(label base.name)', expected $BASE_IMAGE"

# ---------------------------------------------------------------- demo data
DATA="$WORK/data"
OUT="$WORK/out"
# With the project's .venv (make install) when there is one, else with the image's python.
if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -c "import qalas_bids, nibabel" 2>/dev/null; then
    demo_py() { "$ROOT/.venv/bin/python" "$@"; }
    log "demo dataset in $DATA (host .venv)"
else
    demo_py() { podman run --rm -i -v "$WORK:$WORK" --entrypoint python "$IMAGE:latest" "$@"; }
    log "demo dataset in $DATA (no usable .venv: with the image's python)"
fi
demo_py -c "from qalas_bids.cli.demo_data import main; main()" \
    "$DATA" --resolution 2 --snr 60 --seed 0 > "$WORK/demo.log" 2>&1 \
    || { cat "$WORK/demo.log" >&2; die "qalas-bids-demo-data failed"; }
rm -rf "$DATA/derivatives"   # ground truth: not an input of the app
# a 6-slice slab of every QALAS volume keeps the fit short (as tests/test_e2e_cli.py)
demo_py - "$DATA" <<'EOF' || die "cropping the demo QALAS volumes failed"
import sys
from pathlib import Path
import nibabel as nib
paths = sorted(Path(sys.argv[1]).glob("sub-*/**/anat/*_QALAS.nii.gz"))
assert paths, "no QALAS volumes in the demo dataset"
for path in paths:
    img = nib.load(path)
    z0 = img.shape[2] // 2 - 3
    nib.save(img.slicer[:, :, z0:z0 + 6], path)
EOF
chmod -R a+rX "$DATA"
input_sums() { (cd "$DATA" && find . -print0 | sort -z | xargs -0 sh -c 'for p; do if [ -f "$p" ]; then sha256sum "$p"; else echo "dir $p"; fi; done' _); }
before="$(input_sums)"
mkdir -p "$OUT"
chown "$RUN_UID:$RUN_GID" "$OUT"

# ---------------------------------------------------------------------- run
log "podman run --rm -u $RUN_UID:$RUN_GID -v $DATA:/data:ro -v $OUT:/out $IMAGE /data /out participant ..."
T0=$SECONDS
set +e
podman run --rm -u "$RUN_UID:$RUN_GID" -v "$DATA:/data:ro" -v "$OUT:/out" "$IMAGE" /data /out participant \
    --fit-mode pretrained --nprocs 2 --omp-nthreads 1 > "$WORK/run.log" 2>&1
run_rc=$?
set -e
T_RUN=$((SECONDS - T0))
tail -n 15 "$WORK/run.log" >&2
if [ "$run_rc" -ne 0 ]; then
    tail -n 60 "$WORK/run.log" >&2
    fail "participant run exited $run_rc (log above)"
fi
grep -q Traceback "$WORK/run.log" && fail "participant run printed a traceback"

# ------------------------------------------------------------------- checks
prefix=sub-01_ses-01_run-1
anat="$OUT/sub-01/ses-01/anat"
expected=("$OUT/dataset_description.json" "$OUT/sub-01.html"
          "$OUT/sub-01/ses-01/fmap/${prefix}_space-QALAS_TB1map.nii.gz")
for suffix in T1map T2map PDmap IEmap desc-crlb_T1map desc-crlb_T2map desc-crlb_PDmap desc-crlb_IEmap \
              desc-residual_QALAS desc-brain_mask desc-synthetic_T1w desc-synthetic_T2w desc-synthetic_PDw \
              desc-synthetic_FLAIR desc-synthetic_DIR desc-synthetic_PSIR desc-synthetic_STIR; do
    expected+=("$anat/${prefix}_${suffix}.nii.gz" "$anat/${prefix}_${suffix}.json")
done
missing=0
for path in "${expected[@]}"; do
    if [ ! -s "$path" ]; then
        fail "missing output ${path#"$WORK"/}"
        missing=$((missing + 1))
    fi
done
n_out="$(find "$OUT" -type f | wc -l)"
log "outputs: $n_out files, $((${#expected[@]} - missing))/${#expected[@]} expected present"
[ "$n_out" -gt 0 ] || fail "no output files"
find "$OUT" \( -not -uid "$RUN_UID" -o -not -gid "$RUN_GID" \) -printf '%u:%g %p\n' > "$WORK/wrong-owner.txt"
[ ! -s "$WORK/wrong-owner.txt" ] \
    || fail "$(wc -l < "$WORK/wrong-owner.txt") output(s) not owned by $RUN_UID:$RUN_GID, e.g. $(head -n 5 "$WORK/wrong-owner.txt")"
[ "$(input_sums)" = "$before" ] || fail "the input dataset changed"

version_out="$(podman run --rm "$IMAGE" --version 2>&1)" || fail "--version exited non-zero: $version_out"
case "$version_out" in *"$VERSION"*) ;; *) fail "--version printed '$version_out', expected $VERSION" ;; esac
help_out="$(podman run --rm "$IMAGE" --help 2>&1)" || fail "--help exited non-zero"
case "$help_out" in *"usage: qalas-bids"*participant*) ;; *) fail "--help printed no usage" ;; esac
default_out="$(podman run --rm "$IMAGE" 2>&1)" || fail "the image's default command (--help) exited non-zero"
case "$default_out" in *"usage: qalas-bids"*) ;; *) fail "the default command printed no usage" ;; esac

OUT2="$WORK/out-bad"; mkdir -p "$OUT2"; chown "$RUN_UID:$RUN_GID" "$OUT2"
set +e
bad_out="$(podman run --rm -u "$RUN_UID:$RUN_GID" -v "$DATA:/data:ro" -v "$OUT2:/out" "$IMAGE" \
    /data /out participant --participant-label 99 2>&1)"
bad_rc=$?
set -e
[ "$bad_rc" -eq 2 ] || fail "missing participant: exit $bad_rc, expected 2: $(printf '%s' "$bad_out" | tail -n 5)"
case "$bad_out" in *Traceback*) fail "missing participant: traceback printed" ;; esac
grep -qi "99" <<<"$bad_out" || fail "missing participant: the message does not name the label: $bad_out"
log "usage error: $(printf '%s' "$bad_out" | tail -n 1)"

# ------------------------------------- template space, offline (--network none)
# The whole 2 mm demo head with its T1w and an sMRIPrep-like folder, no network at all:
# MNI152NLin2009cAsym must come from the image's TemplateFlow home, baked at build time
# (offline build: the package's shipped files, qalas-bids-prefetch-templates --local). With
# --derivatives only the rigid QALAS -> T1w step is computed (the full template registration
# is tested by pytest's e2e run); the report must draw both registration overlays.
podman run --rm --entrypoint /bin/sh "$IMAGE:latest" -c \
    'test -s "$TEMPLATEFLOW_HOME/tpl-MNI152NLin2009cAsym/tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz" \
     && test ! -e "$TEMPLATEFLOW_HOME/.qalas-bids-local-home"' \
    || fail "the image's TemplateFlow home (/opt/templateflow) lacks the baked MNI152NLin2009cAsym files"
DATA3="$WORK/data-head"; OUT3="$WORK/out-spaces"; mkdir -p "$OUT3"; chown "$RUN_UID:$RUN_GID" "$OUT3"
demo_py -c "from qalas_bids.cli.demo_data import main; main()" \
    "$DATA3" --resolution 2 --snr 60 --seed 0 --with-smriprep > "$WORK/demo3.log" 2>&1 \
    || { cat "$WORK/demo3.log" >&2; die "qalas-bids-demo-data failed (head for the spaces run)"; }
rm -rf "$DATA3/derivatives/groundtruth"
chmod -R a+rX "$DATA3"
T0=$SECONDS
set +e
podman run --rm --network none -u "$RUN_UID:$RUN_GID" -v "$DATA3:/data:ro" -v "$OUT3:/out" "$IMAGE" \
    /data /out participant --fit-mode pretrained --nprocs 2 --omp-nthreads 1 -w /out/work \
    --output-spaces T1w MNI152NLin2009cAsym:res-2 --derivatives smriprep=/data/derivatives/smriprep \
    > "$WORK/run-spaces.log" 2>&1
spaces_rc=$?
set -e
T_SPACES=$((SECONDS - T0))
if [ "$spaces_rc" -ne 0 ]; then
    tail -n 60 "$WORK/run-spaces.log" >&2
    fail "template-space run without network exited $spaces_rc (log above)"
fi
for space in space-T1w space-MNI152NLin2009cAsym_res-2; do
    for suffix in T1map T2map PDmap IEmap; do
        [ -s "$OUT3/sub-01/ses-01/anat/${prefix}_${space}_${suffix}.nii.gz" ] \
            || fail "template-space run: missing ${prefix}_${space}_${suffix}.nii.gz"
    done
    figure="sub-01/figures/${prefix}_${space}_desc-registration_T1w.png"
    [ -s "$OUT3/$figure" ] && grep -qF "$figure" "$OUT3/sub-01.html" \
        || fail "template-space run: the report lacks the registration overlay $figure"
done
log "template space without network: ${T_SPACES}s"

# ------------------------------------------------------ OCI archive (Apptainer)
T0=$SECONDS
ARCHIVE="$WORK/qalas-bids.oci.tar"
if podman save --format oci-archive -o "$ARCHIVE" "$IMAGE:latest" >/dev/null 2>"$WORK/save.err"; then
    tar -tf "$ARCHIVE" > "$WORK/archive.list" || fail "OCI archive is not a tar file"
    grep -qx 'index.json' "$WORK/archive.list" || fail "OCI archive has no index.json"
    log "OCI archive: $(du -h "$ARCHIVE" | cut -f1) in $((SECONDS - T0))s (apptainer build qalas-bids.sif oci-archive://$(basename "$ARCHIVE"))"
else
    fail "podman save --format oci-archive failed: $(cat "$WORK/save.err")"
fi
rm -f "$ARCHIVE"

# ------------------------------------------------------------------- summary
podman images --filter "reference=$IMAGE" >&2
log "base image: ${T_BASE}s ($base_note)"
log "build time: ${T_BUILD}s"
log "run time:   ${T_RUN}s (participant, --fit-mode pretrained); template space offline: ${T_SPACES:-?}s"
log "image size: $((IMAGE_SIZE / 1000000)) MB ($IMAGE:latest, $IMAGE:$VERSION)"
log "total:      $((SECONDS - T_START))s"
if [ "${#failures[@]}" -gt 0 ]; then
    log "FAIL: ${#failures[@]} check(s) failed:"
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
fi
log "PASS"
