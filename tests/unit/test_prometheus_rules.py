"""The alert rules are valid, and every alert has a promtool unit test that makes it fire
(promtool is Debian's `prometheus` package, installed by `make bootstrap`)."""

import re
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "kernex-rules.yml"
TESTS = REPO / "deploy" / "prometheus" / "tests" / "kernex-rules.test.yml"
DOCS = REPO / "docs" / "observability.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: run `make bootstrap` (Debian package prometheus)"
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False)


def alerts() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_rules_are_valid() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_is_unit_tested_firing_and_documented() -> None:
    cases = yaml.safe_load(TESTS.read_text())["tests"]
    fired = {
        check["alertname"]
        for case in cases
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    assert alerts() - fired == set(), "alerts without a test that makes them fire"
    documented = DOCS.read_text()
    assert {a for a in alerts() if f"`{a}`" not in documented} == set()


def test_promtool_unit_tests_pass() -> None:
    tested = promtool("test", "rules", str(TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_runbook_and_the_checklist_names_real_alerts() -> None:
    runbooks = REPO / "docs" / "runbooks"
    assert {a for a in alerts() if not (runbooks / f"{a}.md").is_file()} == set()
    index = (runbooks / "README.md").read_text()
    assert all(f"({a}.md)" in index for a in alerts())

    named = set(
        re.findall(r"`(Kernex[A-Za-z]+)`", (REPO / "docs" / "launch-checklist.md").read_text())
    )
    assert named and named <= alerts(), named - alerts()
