"""kubectl and checkov for the deployment tests, fetched once by deploy/tools/fetch.sh."""

import json
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@cache
def _tools_dir() -> Path:
    result = subprocess.run(
        [str(REPO / "deploy" / "tools" / "fetch.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"deploy/tools/fetch.sh failed:\n{result.stderr}"
    return Path(result.stdout.strip().splitlines()[-1])


def deploy_tool(name: str) -> str:
    """The path of `kubectl` or `checkov`, fetching them on first use."""
    path = _tools_dir() / name
    assert path.exists(), f"{path} missing after deploy/tools/fetch.sh"
    return str(path)


@dataclass(frozen=True, slots=True)
class CheckovReport:
    """What checkov said: failed checks as one line each, how many passed, skip reasons."""

    failed: list[str]
    passed: int
    skip_reasons: dict[str, str]


def checkov(*args: str) -> CheckovReport:
    """Run checkov with `args` (what to scan, which framework) and read its JSON report."""
    result = subprocess.run(
        [deploy_tool("checkov"), *args, "-o", "json"], capture_output=True, text=True, check=False
    )
    report = json.loads(result.stdout)
    results = report["results"]
    return CheckovReport(
        failed=[
            f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed_checks"]
        ],
        passed=report["summary"]["passed"],
        skip_reasons={
            f"{c['check_id']} {c['resource']}": c["check_result"].get("suppress_comment") or ""
            for c in results["skipped_checks"]
        },
    )
