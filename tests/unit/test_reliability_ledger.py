"""The reliability ledger renders what the run did: outcomes per case, variants, figures, and
the cases still without a test."""

from tests.reliability import NOT_YET_TESTED, Case, render


def test_a_case_holds_only_if_every_variant_passed() -> None:
    assert Case("Faults", "c", "h", ["passed", "passed"]).outcome == "held"
    assert Case("Faults", "c", "h", ["passed", "failed"]).outcome == "FAILED"
    assert Case("Faults", "c", "h", ["skipped"]).outcome == "skipped"


def test_the_report_shows_each_case_with_its_figures_and_the_gaps() -> None:
    cases = [
        Case("Faults", "power cut", "a complete version", ["passed"] * 9, figures={"x": 1500}),
        Case("Bad input", "fuzzing", "no failure", ["failed"]),
    ]
    text = render(cases, commit="abc1234", when="2026-12-03 13:00 UTC")
    assert "`abc1234`" in text
    assert "**1 of 2 cases held, 10 variants run.**" in text
    assert "| power cut | a complete version | 9 | held | x: 1,500 |" in text
    assert "| fuzzing | no failure | 1 | FAILED | - |" in text
    assert text.index("## Bad input") < text.index("## Faults")
    assert all(case in text for _, case in NOT_YET_TESTED)
