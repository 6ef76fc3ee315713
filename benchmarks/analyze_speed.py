"""Speed and memory of `ctriage analyze` on real studies: seconds per stage, total, peak RSS.

Runs each case in a fresh process (so peak RSS is that case's own) on the cores given (default 2, the CI and
target size), and prints a Markdown table. Cases: COVID-CT-MD P001 (148 x 512 x 512, JPEG-LS) and a 300-slice
512 x 512 JPEG-LS series made by interpolating P001 along z (the same chest in 0.98 mm slices), compressed
again, so decoding is measured on compressed data. "total" is finding the study (reading every header) plus
all stages, in a process that has imported ctriage; "load" is decoding; "again in the same process" is the
same study analysed a second time in that process (modules, model sessions and decoding workers ready, as in
the service); "`ctriage analyze` wall s" is the whole command from the shell (interpreter start and imports
included). Thin-slice series are analysed on a 2 mm
slice grid (ctriage.pipeline.analysis_slices), so the 300-slice case runs the lesion model on 150 slices.

    python benchmarks/analyze_speed.py [--cores 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
P001 = REPO.parent / "shared" / "data" / "ct_volumes" / "covidctmd_P001_covid19" / "dicom"


def make_300_slice_series(target: Path, slices: int = 300) -> Path:
    """Write P001 interpolated along z to ``slices`` slices (linear, thinner slices over the same chest) as a
    JPEG-LS lossless series with new UIDs, file names out of slice order, as P001 itself."""
    import numpy as np
    import pydicom
    from pydicom.uid import JPEGLSLossless, generate_uid
    from scipy import ndimage

    datasets = sorted((pydicom.dcmread(f) for f in P001.iterdir()), key=lambda ds: -float(ds.ImagePositionPatient[2]))
    stored = np.stack([ds.pixel_array for ds in datasets])  # stored values, head first
    resized = ndimage.zoom(stored.astype(np.float32), (slices / len(datasets), 1, 1), order=1, grid_mode=False)
    resized = np.rint(resized).astype(stored.dtype)
    top = float(datasets[0].ImagePositionPatient[2])
    gap = (top - float(datasets[-1].ImagePositionPatient[2])) / (slices - 1)
    target.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for index in range(slices):
        ds = datasets[min(len(datasets) - 1, round(index * (len(datasets) - 1) / (slices - 1)))]
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], top - gap * index]
        ds.SliceLocation = top - gap * index
        ds.SliceThickness = round(gap, 3)
        ds.InstanceNumber = index + 1
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.compress(JPEGLSLossless, resized[index], encoding_plugin="pyjpegls")
        ds.save_as(target / f"slice_{(index * 7919) % slices:03d}.dcm")  # names out of slice order, as in P001
    return target


def workers_peak_rss_mib() -> float:
    """Sum of the peak RSS of this process's live children (the decoding workers), MiB; pages shared with this
    process after the fork count in both, so this overstates what they add."""
    pid = os.getpid()
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    total_kib = 0
    for child in children:
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def run_case(path: Path) -> dict:
    """Analyse ``path`` in this process; return timings per stage and peak RSS (MiB)."""
    import resource
    import time

    from ctriage.pipeline import analyze_path
    from ctriage.report import write_outputs

    def analyse() -> tuple[dict[str, float], int, float]:
        """Stage timings, slices and total seconds of one analysis with its outputs (the result is dropped)."""
        start = time.perf_counter()
        result = analyze_path(path)
        with tempfile.TemporaryDirectory() as outdir:
            report_start = time.perf_counter()
            write_outputs(result, Path(outdir))
            result.timings_s["report"] = time.perf_counter() - report_start
        return result.timings_s, result.volume.shape[0], time.perf_counter() - start

    timings, slices, total = analyse()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, _, warm_total = analyse()  # modules imported, model sessions made, workers running: as in the service
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # over both runs
    return {
        "workers_peak_rss_mib": workers_peak_rss_mib(),
        "slices": slices,
        "timings_s": timings,
        "total_s": total,
        "warm_total_s": warm_total,
        "cpu_s": usage.ru_utime + usage.ru_stime,  # whole process up to the end of the first run, imports included
        "peak_rss_mib": peak_rss_kib / 1024,
    }


def cli_seconds(cpus: str, path: Path, outdir: Path, env: dict[str, str]) -> float:
    """Wall time of the whole command ``ctriage analyze PATH -o OUTDIR`` on ``cpus``: interpreter start, imports,
    decoding workers, analysis and outputs, as a user at the terminal waits for it."""
    import time

    start = time.perf_counter()
    command = [str(Path(sys.executable).parent / "ctriage"), "analyze", str(path), "-o", str(outdir)]
    subprocess.run(["taskset", "-c", cpus, *command], capture_output=True, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs per case; the fastest is reported")
    parser.add_argument("--case", type=Path, help=argparse.SUPPRESS)  # internal: run one case and print JSON
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(run_case(args.case)))
        return
    if not P001.exists():
        sys.exit(f"benchmark data not found: {P001}")
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[: args.cores])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.cores))
    with tempfile.TemporaryDirectory() as scratch:
        cases = {"P001 (148 slices)": P001, "300 slices": make_300_slice_series(Path(scratch) / "s300")}
        rows = []
        for name, path in cases.items():
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run(
                    ["taskset", "-c", cpus, sys.executable, __file__, "--case", str(path)],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            best = min(runs, key=lambda r: r["total_s"])
            best["cli_s"] = min(cli_seconds(cpus, path, Path(scratch) / "out", env) for _ in range(args.repeats))
            rows.append((name, best))
    from ctriage.cli import REPORT_STAGE
    from ctriage.pipeline import STAGES

    stages = (*STAGES, REPORT_STAGE)
    header = ("| case | " + " | ".join(stages)
              + " | total s | again in the same process s | process CPU s | peak RSS MiB | decoding worker MiB"
              " | `ctriage analyze` wall s |")
    print(f"{args.cores} cores ({cpus}), best of {args.repeats}, load average before: {os.getloadavg()[0]:.1f}\n")
    print(header)
    print("|" + "---|" * (len(stages) + 7))
    for name, run in rows:
        cells = [f"{run['timings_s'].get(stage, 0.0):.2f}" for stage in stages]
        cells += [f"{run['total_s']:.2f}", f"{run['warm_total_s']:.2f}", f"{run['cpu_s']:.1f}",
                  f"{run['peak_rss_mib']:.0f}", f"{run['workers_peak_rss_mib']:.0f}", f"{run['cli_s']:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
