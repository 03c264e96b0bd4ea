"""Packaging stays honest: Dockerfile, Apptainer definition, metadata, docs vs. the CLI.

The Dockerfile and the definition file are parsed and checked for the properties users
rely on (entry point, pinned CUDA torch base, package installed without replacing torch,
writable caches for any UID); the Dockerfile's torch/CUDA shell logic is run against a
fake python. The real build and run is `make container-test` (scripts/ci/container_test.sh,
podman as root on Debian), which these tests keep consistent with docs/containers.md.
"""
from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import qalas_bids
from qalas_bids.cli import validators
from qalas_bids.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
VERSION = qalas_bids.__version__


# ----------------------------------------------------------------------------- helpers
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = re.sub(r"\s+", " ", pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def docker_stages(instructions: list[tuple[str, str]]) -> tuple[dict[str, str], list[dict]]:
    """Global ARG defaults and the stages (each: image, name, instructions)."""
    global_args: dict[str, str] = {}
    stages: list[dict] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"image": parts[0], "name": name, "instructions": []})
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, got {keyword}"
            key, _, default = args.partition("=")
            global_args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1]["instructions"].append((keyword, args))
    return global_args, stages


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), value)


def env_keys(stage: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage["instructions"]:
        if keyword == "ENV":
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"use ENV KEY=value form, got {token!r}"
                env[key] = value
    return env


def parser_long_options() -> set[str]:
    return {
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def parser_primary_options() -> list[str]:
    """The first long spelling of every option (aliases such as --n-cpus excluded)."""
    primaries = []
    for action in build_parser()._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and longs[0] != "--help":
            primaries.append(longs[0])
    return primaries


def markdown_section(text: str, heading_pattern: str) -> str:
    """Body of the first heading matching ``heading_pattern`` up to the next heading of
    the same or a higher level."""
    match = re.search(rf"^(#+)\s*{heading_pattern}.*$", text, re.MULTILINE | re.IGNORECASE)
    assert match, f"no heading matching {heading_pattern!r}"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}}\s", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def fenced_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)]


# ---------------------------------------------------------------------------- Docker
@pytest.fixture(scope="module")
def dockerfile():
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    global_args, stages = docker_stages(instructions)
    return {"args": global_args, "stages": stages}


def test_dockerfile_parser_can_fail():
    with pytest.raises(AssertionError):
        dockerfile_instructions("FROM x\nRUN echo \\\n")
    found = dockerfile_instructions("# c\nFROM a:1 AS b\nRUN x \\\n  # note\n  && y\n")
    assert found == [("FROM", "a:1 AS b"), ("RUN", "x && y")]


def test_docker_base_images_are_pinned_cuda_torch(dockerfile):
    stage_names = {s["name"] for s in dockerfile["stages"] if s["name"]}
    for stage in dockerfile["stages"]:
        image = expand(stage["image"], dockerfile["args"])
        if image in stage_names:
            continue
        assert "$" not in image, f"FROM {stage['image']} depends on an ARG without default"
        assert ":" in image.rsplit("/", 1)[-1], f"FROM {image} has no tag (means :latest)"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and "latest" not in tag, f"FROM {image} uses a moving tag"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"FROM {image}: pin a full version"
        assert "cuda" in tag, f"FROM {image}: the image must carry a CUDA build of torch"
    text = (ROOT / "Dockerfile").read_text()
    assert ":latest" not in text


def test_docker_entrypoint_is_the_cli(dockerfile):
    final = dockerfile["stages"][-1]
    entrypoints = [args for keyword, args in final["instructions"] if keyword == "ENTRYPOINT"]
    assert entrypoints, "final stage has no ENTRYPOINT"
    assert entrypoints[-1].replace(" ", "") == '["qalas-bids"]', "use the exec form ENTRYPOINT [\"qalas-bids\"]"
    scripts = configparser.ConfigParser()
    scripts.read(ROOT / "setup.cfg")
    assert "qalas-bids" in scripts["options.entry_points"]["console_scripts"]
    assert all(keyword != "HEALTHCHECK" for stage in dockerfile["stages"]
               for keyword, _ in stage["instructions"])


def test_docker_installs_the_package_without_replacing_torch(dockerfile):
    runs = [args for stage in dockerfile["stages"] for keyword, args in stage["instructions"]
            if keyword == "RUN"]
    installs = [r for r in runs if re.search(r"pip install[^&]*\s\.(\s|$)", r)]
    assert installs, "no RUN ... pip install ... . (the package itself)"
    install = installs[0]
    assert "--no-cache-dir" in install
    constraint = re.search(r"-c\s+(\S+)", install)
    assert constraint, "install with a constraint file pinning the base image's torch"
    assert any(constraint.group(1) in r and "torch==" in r for r in runs), \
        "the constraint file must be written from the installed torch version"
    assert any("torch.version.cuda" in r for r in runs), "the build must check torch kept CUDA"
    copies = [args for keyword, args in dockerfile["stages"][-1]["instructions"] if keyword == "COPY"]
    names = {s["name"] for s in dockerfile["stages"]}
    for copy in copies:
        source = re.search(r"--from=(\S+)", copy)
        if source:
            assert source.group(1) in names, f"COPY --from={source.group(1)}: no such stage"


def test_docker_runtime_is_uid_agnostic_and_offline(dockerfile):
    final = dockerfile["stages"][-1]
    env = env_keys(final)
    for key in ("HOME", "MPLCONFIGDIR", "TEMPLATEFLOW_HOME", "NIPYPE_NO_ET", "PYTHONUNBUFFERED"):
        assert key in env, f"ENV {key} missing in the final stage"
    assert env["MPLCONFIGDIR"].startswith("/tmp")
    assert env.get("TEMPLATEFLOW_AUTOUPDATE") == "0"
    runs = " ".join(args for keyword, args in final["instructions"] if keyword == "RUN")
    assert f"chmod 1777 {env['HOME']}" in runs or f"chmod 777 {env['HOME']}" in runs, \
        "HOME must be writable by any UID (docker run -u)"
    users = [args for keyword, args in final["instructions"] if keyword == "USER"]
    assert not users or users[-1] not in ("root", "0")


def test_docker_labels_and_version(dockerfile):
    final = dockerfile["stages"][-1]
    args = {a.partition("=")[0]: a.partition("=")[2] for k, a in final["instructions"] if k == "ARG"}
    assert args.get("VERSION") == VERSION, "ARG VERSION must default to qalas_bids.__version__"
    labels = " ".join(a for k, a in final["instructions"] if k == "LABEL")
    for key in ("title", "version", "source", "licenses", "revision", "created"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_keeps_what_pip_needs():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for needed in ("setup.cfg", "pyproject.toml", "README.md", "qalas_bids", "LICENSE"):
        assert needed not in patterns and not any(
            re.fullmatch(re.escape(p).replace(r"\*", ".*"), needed) for p in patterns), needed
    for excluded in (".git", ".venv"):
        assert excluded in patterns


def build_stage(dockerfile) -> dict:
    return next(s for s in dockerfile["stages"] if s["name"] == "build")


def stage_arg_defaults(stage: dict) -> dict[str, str]:
    return {a.partition("=")[0]: a.partition("=")[2] for k, a in stage["instructions"] if k == "ARG"}


def test_docker_runtime_uses_the_build_stage_base(dockerfile):
    """The venv's python is the base image's: both stages start FROM the same image."""
    stages = dockerfile["stages"]
    names = {s["name"] for s in stages if s["name"]}
    bases = {s["image"] for s in stages if s["image"] not in names}
    assert bases == {"${BASE_IMAGE}"}, f"stages start from different images: {bases}"
    assert build_stage(dockerfile)["image"] == stages[-1]["image"]


def test_docker_torch_for_bases_without_torch_is_pinned(dockerfile):
    args = stage_arg_defaults(build_stage(dockerfile))
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", args.get("TORCH_SPEC", "")), args.get("TORCH_SPEC")
    assert args.get("REQUIRE_CUDA") == "auto"
    assert "TORCH_FIND_LINKS" in args
    assert "BASE_IMAGE" in args, "redeclare ARG BASE_IMAGE in the stage that uses it"


FAKE_PYTHON = r"""#!/bin/sh
# Stands in for a base image's python: answers the Dockerfile's torch probes from FAKE_*.
case "$1 $2" in
  "-m venv") mkdir -p "$4/bin" && cp "$0" "$4/bin/python"; exit 0 ;;
  "-m pip") echo "$*" >> "$FAKE_STATE/pip.log"
            for arg in "$@"; do
              case "$arg" in torch==*) echo "${arg#torch==}" > "$FAKE_STATE/venv-torch" ;; esac
            done
            exit 0 ;;
esac
[ "$1" = -c ] || { echo "fake python: unexpected $*" >&2; exit 3; }
case "$2" in
  *find_spec*) [ -n "$FAKE_BASE_TORCH" ]; exit $? ;;
  *torch.version.cuda*) echo "$FAKE_BASE_CUDA" ;;
  *torch.__version__*) echo "$FAKE_BASE_TORCH" ;;
  *importlib.metadata*)
    if [ -f "$FAKE_STATE/venv-torch" ]; then echo "torch==$(cat "$FAKE_STATE/venv-torch")"
    else echo "torch==$FAKE_BASE_TORCH"; fi ;;
  *) echo "fake python: unexpected code $2" >&2; exit 3 ;;
esac
"""


@pytest.fixture()
def torch_setup(dockerfile, tmp_path):
    """Run the build stage's venv/torch RUN with a fake python; returns a runner."""
    stage = build_stage(dockerfile)
    runs = [a for k, a in stage["instructions"] if k == "RUN"
            if "venv" in a and "torch-constraint" in a and "REQUIRE_CUDA" in a]
    assert len(runs) == 1, "one RUN makes the venv and decides torch and CUDA"
    defaults = stage_arg_defaults(stage)
    sh = shutil.which("sh")
    assert sh

    def run(name: str, python: bool = True, base_torch: str = "", base_cuda: str = "", **args):
        root = tmp_path / name
        fakebin, state = root / "bin", root / "state"
        fakebin.mkdir(parents=True)
        state.mkdir()
        if python:
            (fakebin / "python3").write_text(FAKE_PYTHON)
            (fakebin / "python3").chmod(0o755)
        script = runs[0].replace("/opt/qalas-venv", str(root / "venv")).replace(
            "/opt/qalas-build", str(root / "build"))
        env = {"PATH": f"{fakebin}:/usr/bin:/bin" if python else str(fakebin),
               "FAKE_STATE": str(state), "FAKE_BASE_TORCH": base_torch, "FAKE_BASE_CUDA": base_cuda,
               **defaults, "BASE_IMAGE": "some/base:1.0.0", **args}
        proc = subprocess.run([sh, "-c", script], env=env, capture_output=True, text=True, timeout=60)
        read = lambda p: p.read_text().strip() if p.exists() else None  # noqa: E731
        return {"rc": proc.returncode, "stderr": proc.stderr, "pip": read(state / "pip.log"),
                "constraint": read(root / "build" / "torch-constraint.txt"),
                "need_cuda": read(root / "build" / "require-cuda")}
    return run


def test_docker_cuda_base_keeps_its_torch_and_requires_cuda(torch_setup):
    cuda = torch_setup("cuda", base_torch="2.8.0+cu128", base_cuda="12.8")
    assert cuda["rc"] == 0, cuda["stderr"]
    assert cuda["pip"] is None, "torch must not be installed over the base image's"
    assert cuda["constraint"] == "torch==2.8.0+cu128"
    assert cuda["need_cuda"] == "1", "a CUDA base must fail the build if torch loses CUDA"
    assert torch_setup("cuda-off", base_torch="2.8.0+cu128", base_cuda="12.8",
                       REQUIRE_CUDA="0")["need_cuda"] == "0"


def test_docker_base_without_torch_installs_torch_spec(torch_setup):
    cpu = torch_setup("cpu", TORCH_SPEC="torch==2.13.0+cpu", TORCH_FIND_LINKS="/mnt")
    assert cpu["rc"] == 0, cpu["stderr"]
    assert "--find-links /mnt" in cpu["pip"] and cpu["pip"].endswith("torch==2.13.0+cpu")
    assert cpu["constraint"] == "torch==2.13.0+cpu"
    assert cpu["need_cuda"] == "0", "CUDA must not be required where the base has no torch"
    plain = torch_setup("plain")
    assert plain["rc"] == 0 and "--find-links" not in plain["pip"]
    forced = torch_setup("forced", REQUIRE_CUDA="1")
    assert forced["need_cuda"] == "1"
    bad = torch_setup("bad", REQUIRE_CUDA="maybe")
    assert bad["rc"] != 0 and "REQUIRE_CUDA" in bad["stderr"]
    none = torch_setup("none", python=False)
    assert none["rc"] != 0 and "no python" in none["stderr"] and "some/base:1.0.0" in none["stderr"]


@pytest.mark.parametrize("need_cuda, cuda, ok", [("1", None, False), ("1", "12.8", True),
                                                  ("0", None, True)])
def test_docker_cuda_assertion_after_the_install(dockerfile, tmp_path, need_cuda, cuda, ok):
    """The check after `pip install .` fails exactly when CUDA is required and lost."""
    runs = [a for k, a in build_stage(dockerfile)["instructions"] if k == "RUN"]
    codes = [m.group(1) for r in runs if re.search(r"pip install[^&]*\s\.(\s|$)", r)
             for m in re.finditer(r'python -c "([^"]*torch\.version\.cuda[^"]*)"', r)]
    assert len(codes) == 1, "the package install RUN checks torch.version.cuda once"
    flag = tmp_path / "require-cuda"
    flag.write_text(need_cuda + "\n")
    code = codes[0].replace("/opt/qalas-build/require-cuda", str(flag))
    assert str(flag) in code, "the check reads the build's CUDA decision"
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"__version__ = 'x'\nclass version:\n    cuda = {cuda!r}\n")
    import sys
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path / "fake"), "PATH": "/usr/bin:/bin"})
    assert (proc.returncode == 0) == ok, proc.stderr
    if not ok:
        assert "torch lost its CUDA build" in proc.stderr


# ------------------------------------------------------------------ container CI
CONTAINER_TEST = ROOT / "scripts" / "ci" / "container_test.sh"


def test_container_ci_script_builds_and_runs_the_dockerfile():
    text = CONTAINER_TEST.read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    bash = shutil.which("bash")
    assert bash
    result = subprocess.run([bash, "-n", str(CONTAINER_TEST)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "set -euo pipefail" in text
    assert re.search(r"apt-get install .*podman debootstrap runc", joined), "install missing tools"
    for setting in ('runtime = "runc"', 'cgroup_manager = "cgroupfs"', "default_ulimits", "CONTAINERS_CONF"):
        assert setting in text, setting
    assert "/etc/apt/sources.list.d/" in text and "deb.debian.org" not in text, "read the mirror"
    assert "podman image exists" in text, "reuse the debootstrap base when it is in the store"
    build = re.search(r"^podman build .*", joined, re.MULTILINE)
    assert build and "--build-arg BASE_IMAGE=" in build.group(0)
    assert '-t "$IMAGE:latest"' in build.group(0) and '-t "$IMAGE:$VERSION"' in build.group(0)
    assert re.search(r'podman run --rm -u "\$RUN_UID:\$RUN_GID" -v "\$DATA:/data:ro" '
                     r'-v "\$OUT:/out" "\$IMAGE" /data /out participant', joined)
    assert "-not -uid" in text and "--version" in text and "--help" in text
    assert "podman save --format oci-archive" in text
    assert re.search(r"^container-test:\n\tbash scripts/ci/container_test.sh",
                     (ROOT / "Makefile").read_text(), re.MULTILINE)


def test_containers_doc_covers_build_run_and_apptainer():
    doc = (DOCS / "containers.md").read_text()
    for needed in ("make container-test", "--build-arg BASE_IMAGE=", "--gpus all",
                   '-u "$(id -u):$(id -g)"',
                   "podman save --format oci-archive -o qalas-bids.oci.tar qalas-bids:latest",
                   "apptainer build qalas-bids.sif oci-archive://qalas-bids.oci.tar",
                   "scripts/ci/container_test.sh"):
        assert needed in doc, needed


# ------------------------------------------------------------------------- Apptainer
def test_apptainer_definition():
    text = (ROOT / "singularity" / "qalas-bids.def").read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", text, re.MULTILINE))
    assert header["Bootstrap"] in ("docker", "docker-daemon", "docker-archive")
    assert header["From"].endswith(f"qalas-bids:{VERSION}"), "bootstrap from this version's image"
    runscript = markdown_like_section(text, "%runscript")
    assert re.search(r'exec qalas-bids "\$@"', runscript)


def markdown_like_section(text: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}\s*$(.*?)(?=^%\w+|\Z)", text, re.S | re.M)
    assert match, f"{name} missing"
    return match.group(1)


# -------------------------------------------------------------------------- metadata
def test_setup_cfg_metadata_and_entry_points():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["name"] == "qalas-bids"
    assert cfg["metadata"]["version"].strip() == "attr: qalas_bids.__version__"
    assert cfg["metadata"]["license"] == "Apache-2.0"
    scripts = dict(
        (name.strip(), target.strip())
        for name, _, target in (line.partition("=") for line in
                                cfg["options.entry_points"]["console_scripts"].strip().splitlines())
    )
    assert scripts["qalas-bids"] == "qalas_bids.cli.run:main"
    assert scripts["qalas-bids-demo-data"] == "qalas_bids.cli.demo_data:main"
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_version_has_a_single_source():
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", VERSION)
    assert importlib.metadata.version("qalas-bids") == VERSION, \
        "installed metadata is stale: reinstall (pip install -e .)"
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert str(citation["version"]) == VERSION
    defined = [p.relative_to(ROOT) for p in (ROOT / "qalas_bids").rglob("*.py")
               if re.search(r"^__version__\s*=", p.read_text(), re.MULTILINE)]
    assert defined == [Path("qalas_bids/__init__.py")], f"__version__ defined in {defined}"


def test_license_is_apache():
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert "Version 2.0" in (ROOT / "LICENSE").read_text()


# ------------------------------------------------------------------------ docs vs CLI
def test_every_cli_option_is_documented():
    usage = (DOCS / "usage.md").read_text()
    missing = [o for o in sorted(parser_long_options()) if not re.search(rf"`{re.escape(o)}\b", usage)]
    assert not missing, f"docs/usage.md does not mention {missing}"
    for action in build_parser()._actions:
        for choice in action.choices or ():
            assert f"`{choice}`" in usage, f"choice {choice!r} of {action.option_strings} undocumented"


def test_usage_option_table_matches_the_parser():
    """The option reference lists exactly the parser's options (no stale ones)."""
    usage = (DOCS / "usage.md").read_text()
    rows = re.findall(r"^\|\s*(`-.*?)\s*\|", usage, re.MULTILINE)
    documented = {o for row in rows for o in re.findall(r"`(--[\w-]+)", row)}
    assert documented, "docs/usage.md needs an option table (| `--option` | ... |)"
    stale = documented - parser_long_options() - {"--help"}
    assert not stale, f"docs/usage.md documents options the CLI does not have: {sorted(stale)}"
    assert set(parser_primary_options()) <= documented


def test_every_documented_qalas_bids_call_parses(tmp_path):
    """Example command lines in the docs use options that exist (bids_dir is faked)."""
    known = parser_long_options() | {"-w", "-v", "-vv", "-h"}
    sources = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted((DOCS / "examples").glob("*"))]
    checked = 0
    for source in sources:
        text = source.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            if "qalas-bids " not in line or "participant" not in line:
                continue
            tail = line.split("participant", 1)[1]
            for option in re.findall(r"(?<![\w/-])(--?[a-zA-Z][\w-]*)", tail):
                assert option in known, f"{source.name}: unknown option {option} in: {line.strip()}"
            checked += 1
    assert checked >= 5


# --------------------------------------------------------------------------------- HPC
def test_sbatch_script_is_valid_bash_array_job():
    script = DOCS / "examples" / "qalas-bids_array.sbatch"
    text = script.read_text()
    bash = shutil.which("bash")
    assert bash
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^#SBATCH\s+--array=", text, re.MULTILINE)
    assert "SLURM_ARRAY_TASK_ID" in text
    assert re.search(r"(singularity|apptainer)\S*\s+run\s+--cleanenv", text.replace("\\\n", " "))
    assert "--nv" in text and "--participant-label" in text
    assert text.startswith("#!/bin/bash")


def test_slurm_plugin_example_is_accepted_by_the_cli():
    plugin = validators.plugin_file(str(DOCS / "examples" / "slurm_plugin.yml"))
    assert plugin["plugin"] in ("SLURM", "SLURMGraph")
    assert "sbatch_args" in plugin["plugin_args"]


# ------------------------------------------------------------------------------ README
def test_readme_quick_start_is_exactly_make_demo_and_make_test():
    readme = (ROOT / "README.md").read_text()
    quick = markdown_section(readme, r"quick[ -]?start")
    assert fenced_blocks(quick) == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)


def test_readme_documents_containers_and_citation():
    readme = (ROOT / "README.md").read_text()
    assert "docker run --gpus all -v /data:/data:ro -v /out:/out qalas-bids /data /out participant" in readme
    assert re.search(r"(singularity|apptainer) run --cleanenv --nv -B", readme)
    assert "sbatch" in readme
    assert "SSL-QALAS" in readme and "Magn Reson Med" in readme


def test_local_links_resolve():
    sources = [ROOT / "README.md", *DOCS.rglob("*.md"), ROOT / "singularity" / "README.md"]
    broken = []
    for source in sources:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", source.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            if not (source.parent / target).exists():
                broken.append(f"{source.relative_to(ROOT)} -> {target}")
    assert not broken, broken
