"""kubectl and checkov for the deployment tests, fetched once by deploy/tools/fetch.sh."""

import subprocess
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
