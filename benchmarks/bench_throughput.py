"""End-to-end throughput of qalas-bids through the real CLI (seconds per subject, subjects/hour).

For each fit mode it runs, on a generated 1 mm demo dataset (the digital brain: about
1.9 M fitted voxels, or ``--anatomy head``: 3.7 M with scalp, skull and eyes):

* ``single``: one ``qalas-bids ... participant --participant-label <s>`` call per subject,
  end to end (start-up, input checks, workflow, QC, reports): wall seconds per subject;
* ``cohort``: one call for all ``--subjects``: subjects per hour (per GPU-hour on a GPU).

It also reports the peak memory of the process tree, the mean per-stage seconds from the
runs' ``logs/timing-*.json``, GPU utilisation (``nvidia-smi`` sampled every 0.5 s, when
present), and two in-process baselines measured in this script on the same data: the
*I/O floor* (reading the five QALAS inputs and writing the 18 compressed float32 outputs with
the app's own gzip, the least any tool must do) and the *fit* stage alone, so the ratios
say how close to the I/O limit a run is. Example::

    .venv/bin/python benchmarks/bench_throughput.py --subjects 2 --fit-modes pretrained scan-specific
    .venv/bin/python benchmarks/bench_throughput.py --device cuda --subjects 8 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-c", "import sys; from qalas_bids.cli.run import main; sys.exit(main())"]
#: Outputs of one run: 9 maps, 2 masks, B1, 7 synthetic images (float32 or uint8).
N_OUTPUTS = 18


class TreeMonitor:
    """Samples the peak memory of a run's process tree and the GPU utilisation.

    Memory is the sum of PSS (proportional set size: a page shared by n processes counts
    1/n in each, so forked workers are not counted twice), or of RSS where PSS cannot be
    read; ``peak_rss_one`` is the largest single process.
    """

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.peak_mem = 0
        self.peak_rss_one = 0
        self.gpu_util: list[float] = []
        self.gpu_mem: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._smi = shutil.which("nvidia-smi")

    def __enter__(self) -> "TreeMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                total = 0
                for proc in procs:
                    try:
                        info = proc.memory_full_info()
                        total += getattr(info, "pss", info.rss)
                        self.peak_rss_one = max(self.peak_rss_one, info.rss)
                    except psutil.Error:
                        pass
                self.peak_mem = max(self.peak_mem, total)
            except psutil.Error:
                pass
            if self._smi:
                try:
                    out = subprocess.run([self._smi, "--query-gpu=utilization.gpu,memory.used",
                                          "--format=csv,noheader,nounits"], capture_output=True,
                                         text=True, timeout=5).stdout.splitlines()
                    util, mem = (float(v) for v in out[0].split(","))
                    self.gpu_util.append(util)
                    self.gpu_mem.append(mem)
                except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                    self._smi = None
            self._stop.wait(self.interval)


def make_dataset(root: Path, subjects: list[str], resolution: float, anatomy: str, snr: float) -> None:
    from qalas_bids.demo.dataset import write_demo_dataset

    write_demo_dataset(root, subjects=subjects, sessions=("01",), runs=(1,), resolution=resolution,
                       snr=snr, seed=3, anatomy=anatomy)
    shutil.rmtree(root / "derivatives", ignore_errors=True)


def run_cli(bids: Path, out: Path, work: Path, labels: list[str], mode: str, nprocs: int,
            device: str) -> dict:
    """One ``participant`` call; wall time, peak memory, GPU use and its stage-timing JSON."""
    cmd = [*CLI, str(bids), str(out), "participant", "--participant-label", *labels, "-w", str(work),
           "--nprocs", str(nprocs), "--fit-mode", mode, "--device", device, "--skip-bids-validation", "-q"]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with TreeMonitor(proc.pid) as monitor:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"qalas-bids failed ({proc.returncode}):\n{stderr[-3000:]}")
    timing = json.loads(max((out / "logs").glob("timing-*.json"), key=lambda p: p.stat().st_mtime).read_text())
    return {"wall_s": wall, "peak_mem_gib": monitor.peak_mem / 2**30,
            "peak_rss_one_process_gib": monitor.peak_rss_one / 2**30,
            "gpu_util_mean": statistics.fmean(monitor.gpu_util) if monitor.gpu_util else None,
            "gpu_util_max": max(monitor.gpu_util) if monitor.gpu_util else None,
            "gpu_mem_max_mib": max(monitor.gpu_mem) if monitor.gpu_mem else None,
            "stages": timing["stages"], "device": timing.get("device")}


def stage_means(results: list[dict]) -> dict[str, float]:
    """Mean seconds per stage name (node stages summed per run first)."""
    sums: dict[str, list[float]] = {}
    for result in results:
        per_run: dict[str, float] = {}
        for row in result["stages"]:
            per_run[row["stage"]] = per_run.get(row["stage"], 0.0) + row["seconds"]
        for name, seconds in per_run.items():
            sums.setdefault(name, []).append(seconds)
    return {name: statistics.fmean(values) for name, values in sums.items()}


def io_floor(bids: Path, subject: str) -> dict:
    """Seconds to read one subject's five QALAS inputs and write 18 outputs (same gzip)."""
    import nibabel as nib

    from qalas_bids.utils.nifti_io import map_threads, read_array, write_images

    files = sorted(bids.glob(f"sub-{subject}/**/anat/*_QALAS.nii.gz"))
    start = time.perf_counter()
    arrays = map_threads(read_array, files)
    read_s = time.perf_counter() - start
    reference = nib.load(files[0])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_images((nib.Nifti1Image(arrays[i % len(arrays)], reference.affine), Path(tmp) / f"o{i}.nii.gz")
                     for i in range(N_OUTPUTS))
        write_s = time.perf_counter() - start
    return {"read_s": read_s, "write_s": write_s, "total_s": read_s + write_s}


def fitted_voxels(out: Path, subject: str) -> int:
    from qalas_bids.utils.nifti_io import read_array

    mask = next(out.glob(f"sub-{subject}/**/anat/*_desc-head_mask.nii.gz"))
    return int((read_array(mask, np.uint8) > 0).sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=2, help="subjects in the cohort (default 2)")
    ap.add_argument("--single", type=int, default=None,
                    help="subjects run one call each (default: all; 0 skips the single rows)")
    ap.add_argument("--fit-modes", nargs="+", default=["pretrained", "scan-specific"])
    ap.add_argument("--resolution", type=float, default=1.0)
    ap.add_argument("--anatomy", choices=("brain", "head"), default="brain",
                    help="brain: the issue's 1.9 M-voxel case; head: scalp, skull, eyes (3.7 M)")
    ap.add_argument("--snr", type=float, default=60.0)
    ap.add_argument("--nprocs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", type=Path, help="reuse (or create) the BIDS dataset here")
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    args = ap.parse_args(argv)

    subjects = [f"{i + 1:02d}" for i in range(args.subjects)]
    n_single = len(subjects) if args.single is None else min(args.single, len(subjects))
    with tempfile.TemporaryDirectory(prefix="qalas-bench-") as tmp:
        tmp = Path(tmp)
        bids = args.data or tmp / "bids"
        if not (bids / "dataset_description.json").is_file():
            print(f"generating {len(subjects)} subject(s), {args.anatomy}, {args.resolution:g} mm ...", flush=True)
            make_dataset(bids, subjects, args.resolution, args.anatomy, args.snr)
        floor = io_floor(bids, subjects[0])
        results: dict = {"resolution_mm": args.resolution, "anatomy": args.anatomy, "nprocs": args.nprocs,
                         "device_requested": args.device, "cpu_count": os.cpu_count(), "io_floor": floor,
                         "modes": {}}
        for mode in args.fit_modes:
            single = [run_cli(bids, tmp / f"out-{mode}-{s}", tmp / f"work-{mode}-{s}", [s], mode,
                              args.nprocs, args.device) for s in subjects[:n_single]]
            cohort = run_cli(bids, tmp / f"out-{mode}-cohort", tmp / f"work-{mode}-cohort", subjects, mode,
                             args.nprocs, args.device)
            entry = {"cohort": {**cohort, "subjects": len(subjects),
                                "subjects_per_hour": 3600 * len(subjects) / cohort["wall_s"]}}
            if single:
                means = stage_means(single)
                entry["single"] = {"wall_s": [r["wall_s"] for r in single],
                                   "wall_s_median": statistics.median(r["wall_s"] for r in single),
                                   "peak_mem_gib_max": max(r["peak_mem_gib"] for r in single),
                                   "peak_rss_one_gib_max": max(r["peak_rss_one_process_gib"] for r in single),
                                   "gpu_util_mean": single[0]["gpu_util_mean"], "stages_mean_s": means,
                                   "fit_s_mean": means.get("fit", float("nan"))}
            entry["voxels"] = fitted_voxels(tmp / f"out-{mode}-cohort", subjects[0])
            results["modes"][mode] = entry
            results["device"] = cohort["device"]
        print_tables(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


def print_tables(results: dict) -> None:
    floor = results["io_floor"]["total_s"]
    print(f"\nqalas-bids throughput: {results['anatomy']} at {results['resolution_mm']:g} mm, device "
          f"{results.get('device')}, --nprocs {results['nprocs']} ({results['cpu_count']} CPUs)")
    print(f"I/O floor (read 5 inputs + write {N_OUTPUTS} outputs, same gzip, same process): {floor:.2f} s")
    print("| fit mode | voxels | s/subject (single, median) | fit stage s | end-to-end / fit | end-to-end / I/O floor "
          "| cohort subjects/h | peak memory GiB (PSS, all processes) | GPU util % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, entry in results["modes"].items():
        single, cohort = entry.get("single"), entry["cohort"]
        wall = single["wall_s_median"] if single else float("nan")
        fit = single["fit_s_mean"] if single else float("nan")
        util = cohort["gpu_util_mean"]
        print(f"| {mode} | {entry['voxels']:,} | {wall:.1f} | {fit:.1f} | {wall / fit:.2f} | {wall / floor:.1f} "
              f"| {cohort['subjects_per_hour']:.0f} ({cohort['subjects']} in {cohort['wall_s']:.0f} s) "
              f"| {max(cohort['peak_mem_gib'], single['peak_mem_gib_max'] if single else 0):.2f} "
              f"| {'-' if util is None else f'{util:.0f}'} |")
    largest = max(max(e["cohort"]["peak_rss_one_process_gib"], *(
        [] if "single" not in e else [e["single"]["peak_rss_one_gib_max"]])) for e in results["modes"].values())
    print(f"largest single process (RSS): {largest:.2f} GiB")
    for mode, entry in results["modes"].items():
        if "single" in entry:
            print(f"\nmean stage seconds, {mode} (one subject per call):")
            for name, seconds in sorted(entry["single"]["stages_mean_s"].items(), key=lambda kv: -kv[1]):
                print(f"  {name:<50} {seconds:7.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
