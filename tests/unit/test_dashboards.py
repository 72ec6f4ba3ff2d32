"""The Grafana dashboards are generated from code (deploy/grafana/kernex_dashboards.py), the
committed JSON is exactly what it generates, every panel's PromQL parses (promtool checks it as
a recording rule), and every Kernex series a panel reads is one the backend exports."""

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
RULES = REPO / "deploy" / "prometheus" / "kernex-rules.yml"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "kernex_dashboards", GRAFANA / "kernex_dashboards.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DASHBOARDS = sorted(generator().DASHBOARDS)


def expressions(dashboard: dict[str, object]) -> list[str]:
    panels = dashboard["panels"]
    assert isinstance(panels, list) and panels
    return [target["expr"] for panel in panels for target in panel["targets"]]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_committed_json_is_what_the_code_generates(name: str) -> None:
    committed = (GRAFANA / "dashboards" / f"{name}.json").read_text()
    assert committed == generator().render(name), "run `make dashboards` and commit the result"


def test_every_panel_query_parses(tmp_path: Path) -> None:
    exprs = [
        expr for name in DASHBOARDS for expr in expressions(json.loads(generator().render(name)))
    ]
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"kernex_dashboard:panel_{n}", "expr": expr}
                    for n, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `make bootstrap`"
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout


def test_panels_read_only_series_that_exist() -> None:
    documented = (REPO / "docs" / "observability.md").read_text()
    recorded = {
        rule["record"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    for name in DASHBOARDS:
        for expr in expressions(json.loads(generator().render(name))):
            for series in re.findall(r"\bkernex_[a-z_]+", expr):
                base = re.sub(r"_(bucket|count|sum)$", "", series)
                assert f"`{base}`" in documented, f"{name}: {series} is not an exported series"
            for rule in re.findall(r"\bkernex:[a-z_:]+", expr):
                assert rule in recorded, f"{name}: {rule} is not a recording rule"
