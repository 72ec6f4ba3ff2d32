"""Recording benchmark figures: BENCHMARKS.md (appended) and results/latest.json (merged)."""

import json
import os
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LATEST = BENCH_DIR / "results" / "latest.json"
HEADER = """# Benchmarks

Every figure here was measured on the machine named with it, by the command named with it.
Figures are medians of repeated runs; ratios compare with a baseline measured in the same run,
because this machine is shared and noisy. Sections are appended by the scripts in bench/.
"""
BENCHMARKS_MD = REPO / "BENCHMARKS.md"


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure; `baseline` and `ratio` when it is compared with one."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None


def median(values: list[float]) -> float:
    """Median, rounded for reporting."""
    return round(statistics.median(values), 3)


def machine_facts() -> str:
    """One line describing the machine the figures come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, Python {platform.python_version()}, "
        f"commit {commit or 'unknown'}"
    )


def destinations() -> tuple[Path, Path]:
    """Where record() writes: the repository's BENCHMARKS.md and results/latest.json, or, for
    the smoke runs of the tests, the same two files in the folder KERNEX_BENCH_OUTPUT names."""
    override = os.environ.get("KERNEX_BENCH_OUTPUT")
    if override:
        folder = Path(override)
        return folder / "BENCHMARKS.md", folder / "latest.json"
    return BENCHMARKS_MD, LATEST


def record(title: str, command: str, figures: list[Figure], notes: list[str]) -> None:
    """Append a section to BENCHMARKS.md and merge the figures into results/latest.json."""
    benchmarks_md, latest = destinations()
    # Printed first: a run's figures are never lost to a file that cannot be written.
    for figure in figures:
        compared = [f"baseline {figure.baseline}"] if figure.baseline is not None else []
        compared += [f"ratio {figure.ratio}"] if figure.ratio is not None else []
        suffix = f" ({', '.join(compared)})" if compared else ""
        print(f"{figure.name}: {figure.value} {figure.unit}{suffix}", flush=True)
    benchmarks_md.parent.mkdir(parents=True, exist_ok=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## {title} ({when})\n",
        f"Command: `{command}`  ",
        f"Machine: {machine_facts()}\n",
        "| figure | value | baseline (same run) | ratio |",
        "|---|---|---|---|",
    ]
    for figure in figures:
        baseline = f"{figure.baseline} {figure.unit}" if figure.baseline is not None else "-"
        ratio = f"{figure.ratio:.2f}" if figure.ratio is not None else "-"
        lines.append(f"| `{figure.name}` | {figure.value} {figure.unit} | {baseline} | {ratio} |")
    lines.append("")
    lines.extend(f"- {note}" for note in notes)
    if not benchmarks_md.exists():
        benchmarks_md.write_text(HEADER)
    with benchmarks_md.open("a") as handle:
        handle.write("\n".join(lines) + "\n")

    latest.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(latest.read_text()) if latest.exists() else []
    names = {f.name for f in figures}
    merged = [row for row in existing if row["name"] not in names] + [asdict(f) for f in figures]
    latest.write_text(json.dumps(sorted(merged, key=lambda r: r["name"]), indent=1) + "\n")
