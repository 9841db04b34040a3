"""The README tells the truth about the demo: `main` at its defaults (what `make demo` runs, in this
process instead of `mlflow run`) selects the plan the README quotes and reaches the same calls
(RUM against doing nothing and against the best baseline). Numbers move a little between CPUs
(kernels for another ISA sum floats in another order); the plan and the calls must not."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_verdict() -> str:
    text = (REPO / "README.md").read_text()
    block = text[text.index("<!-- demo-verdict -->"):text.index("<!-- /demo-verdict -->")]
    return " ".join(line.lstrip("> ").strip() for line in block.splitlines()[1:])


def calls(verdict: str) -> dict:
    """The qualitative content of a verdict paragraph: the plan, and each call it makes."""
    return {"plan": re.search(r"searched RUM plan `([^`]+)`", verdict).group(1),
            "vs nothing": "does NOT beat doing nothing" if "does NOT beat doing nothing" in verdict else "beats doing nothing",
            "vs best": re.search(r"it is (better than|worse than|not distinguishable from) the best baseline, (.+?) \(ToW",
                                 verdict).groups(),
            "break even": re.search(r"cheaper than retraining every time: ([^.]+)\.", verdict).group(1)}


def test_the_readme_verdict_parses():
    quoted = calls(readme_verdict())
    assert quoted["plan"] == "low=finetune;mid=finetune;high=finetune"
    assert quoted["vs best"] == ("worse than", "finetune (tuned)")


@pytest.mark.slow  # the demo itself: ~3 minutes on 2 cores
def test_main_at_its_defaults_says_what_the_readme_says(tracking, capsys):
    from mlflow_unlearn.cli import main

    assert main(["main"]) in (0, None)
    printed = capsys.readouterr().out
    verdict = next(line for line in printed.splitlines() if line.startswith("Verdict: "))
    got, quoted = calls(verdict), calls(readme_verdict())
    assert got["plan"] == quoted["plan"] and got["vs nothing"] == quoted["vs nothing"]
    assert got["vs best"] == quoted["vs best"]
    assert "1.00/1.00/0.00" in printed  # the reference's per-tier accuracy, as the README says
