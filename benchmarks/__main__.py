"""`python -m benchmarks`: run every stage's benchmark, write one JSON report and a PNG chart.

Each `benchmarks/bench_<stage>.py` exposes `run(quick: bool) -> dict`, checks correctness before it
times, and reports its comparisons as ratios (ours / baseline). This runner collects every number
whose key names a ratio or speed-up, so a benchmark adds a comparison just by returning it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

STAGES = ("prepare", "train", "inference", "serve")
RATIO_WORDS = ("ratio", "speedup", "_vs_")
NOT_RATIOS = ("diff",)  # e.g. a relative loss difference is a correctness check, not a speed ratio


def machine_description() -> dict[str, Any]:
    """What the figures were measured on: they only compare within one machine and one run."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


_STAGE_CHILD = (
    "import json, sys; from benchmarks.bench_{stage} import run; "
    "result = run(quick={quick}); open(sys.argv[1], 'w').write(json.dumps(result, default=str))"
)


def run_stage(stage: str, quick: bool) -> tuple[dict[str, Any], float, float]:
    """Run one stage's `run(quick)` in a process of its own; return its result, peak RSS in MB and
    CPU seconds (user + system, the contenders it spawned included: a busy machine's wall time
    says little about what the stage costs on an idle one).

    One process per stage keeps stages from inheriting each other's memory (models, arenas and
    allocator caches a stage leaves behind are never given back to the OS), so the run's peak is the
    largest stage's, and the peak is attributed to the stage that made it: `wait4` reports the
    maximum RSS of the child and of every process it waited for (the contenders it spawned).
    """
    with tempfile.TemporaryDirectory(prefix="lmfast-bench-") as scratch:
        output = Path(scratch) / "result.json"
        code = _STAGE_CHILD.format(stage=stage, quick=quick)
        # its own process group: Ctrl-C reaches this runner only, which then ends the whole stage (the
        # contenders it spawned too) instead of letting a stage take it as the end of one run and go on
        child = None
        try:
            child = subprocess.Popen([sys.executable, "-c", code, str(output)], start_new_session=True)
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:  # KeyboardInterrupt (Ctrl-C), or SIGTERM through `_terminate`
            if child is not None:
                _kill_group(child)
            raise
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise RuntimeError(f"benchmarks/bench_{stage}.py exited with {child.returncode}")
        cpu_seconds = usage.ru_utime + usage.ru_stime
        return json.loads(output.read_text(encoding="utf-8")), usage.ru_maxrss / 1024, cpu_seconds


def _kill_group(child: subprocess.Popen) -> None:
    """End a stage and everything it started: SIGTERM, then SIGKILL after 5 s."""
    for signum, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # `kill` stops the suite as Ctrl-C does


def collect_ratios(result: Any, prefix: str = "") -> dict[str, float]:
    """Flatten every numeric value whose key names a ratio into `{"path.to.key": value}`."""
    found: dict[str, float] = {}
    if isinstance(result, dict):
        for key, value in result.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                name = str(key).lower()
                if any(w in name for w in RATIO_WORDS) and not any(w in name for w in NOT_RATIOS):
                    found[path] = float(value)
            else:
                found.update(collect_ratios(value, path))
    elif isinstance(result, list):
        for index, item in enumerate(result):
            label = item.get("name", index) if isinstance(item, dict) else index
            found.update(collect_ratios(item, f"{prefix}[{label}]"))
    return found


def short_label(path: str) -> str:
    """`models[0].runs[small-16M batch 1].contenders.x.speedup_vs_y` -> `small-16M batch 1 x.speedup_vs_y`."""
    path = re.sub(r"\w+\[\d+\]\.", "", path)
    path = re.sub(r"runs\[(.*?)\]\.contenders\.", r"\1 ", path)
    return re.sub(r"\[(.*?)\]", r" \1", path)


def figure(ratios: dict[str, dict[str, float]], title: str) -> Any:
    """A horizontal bar per comparison, log-scaled, with the 1x line marked and every label inside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, colors = [], [], []
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3"]
    for index, (stage, stage_ratios) in enumerate(ratios.items()):
        for key, value in stage_ratios.items():
            if value > 0 and value != 1.0:  # a baseline's ratio to itself says nothing
                labels.append(f"{stage}: {short_label(key)}")
                values.append(value)
                colors.append(palette[index % len(palette)])
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.38 * len(values) + 1.2)))
    ax.barh(range(len(values)), values, color=colors)
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    if values:
        # room right of the longest bar for its " 1055.30x" label (a log axis: a factor, not a margin)
        ax.set_xlim(min(min(values), 1.0) / 1.5, max(max(values), 1.0) * 6)
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.2f}x", va="center", fontsize=8)
    ax.set_xlabel("ratio (lmfast / baseline; > 1 is better for lmfast unless the key says otherwise)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot(ratios: dict[str, dict[str, float]], path: Path, title: str) -> None:
    """Write `figure(...)` as a PNG."""
    import matplotlib.pyplot as plt

    fig = figure(ratios, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def chart_title(machine: dict[str, Any]) -> str:
    cpu = machine.get("cpu_model", machine["processor"])
    return f"lmfast vs baselines — {cpu}, {machine['cpu_count']} cores"


def replot(output: Path) -> int:
    report = json.loads((output / "report.json").read_text(encoding="utf-8"))
    ratios = {
        stage: collect_ratios(entry["result"])
        for stage, entry in report["stages"].items()
        if "result" in entry
    }
    report["ratios"] = ratios
    (output / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    plot(ratios, output / "report.png", chart_title(report["machine"]))
    print(f"wrote {output / 'report.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--quick", action="store_true", help="short runs (minutes, not tens of minutes)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--replot",
        action="store_true",
        help="redraw report.png (and the ratios) from an existing report.json, running nothing",
    )
    args = parser.parse_args(argv)
    if args.replot:
        return replot(args.output)

    args.output.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run_stages(args)
    except KeyboardInterrupt:
        print(
            "python -m benchmarks: interrupted; stopped the stage in progress, no report written",
            file=sys.stderr,
        )
        return 130


def _run_stages(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {"machine": machine_description(), "quick": args.quick, "stages": {}}
    ratios: dict[str, dict[str, float]] = {}
    failed = []
    for stage in args.stages:
        print(f"== benchmark {stage}", flush=True)
        started = time.perf_counter()
        try:
            result, peak_rss_mb, cpu_seconds = run_stage(stage, args.quick)
        except Exception as error:  # one broken stage must not hide the others' figures
            traceback.print_exc()
            report["stages"][stage] = {"error": f"{type(error).__name__}: {error}"}
            failed.append(stage)
            continue
        report["stages"][stage] = {
            "result": result,
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(cpu_seconds, 1),
            "load_average_after": round(os.getloadavg()[0], 2),
            "peak_rss_mb": round(peak_rss_mb, 1),
        }
        entry = report["stages"][stage]
        print(
            f"   {entry['seconds']:.0f} s wall, {entry['cpu_seconds']:.0f} s of CPU, "
            f"load average {entry['load_average_after']:.1f}",
            flush=True,
        )
        print(f"   peak RSS of the stage (its largest process): {peak_rss_mb:,.0f} MB", flush=True)
        ratios[stage] = collect_ratios(result)
        for key, value in ratios[stage].items():
            print(f"   {key}: {value:.2f}x", flush=True)

    report["ratios"] = ratios
    json_path = args.output / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    png_path = args.output / "report.png"
    if any(ratios.values()):
        plot(ratios, png_path, chart_title(report["machine"]))
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path.exists() else ""))
    if failed:
        print(f"failed stages: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
