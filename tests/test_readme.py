"""The README opens with the two set-up commands, and .ci/run runs the README's test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    lines = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in lines[:8] if line.startswith("python3 -m venv")]
    assert len(commands) == 2, "the README must open with the main-job and the test commands"
    main, tests = (c.split("&&")[-1].strip() for c in commands)
    assert main == "python pipelines/train_joint.py"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci, f"{tests!r} is the README's test command but not a line of .ci/run"
    assert 'pip install -q -e ".[test]"' in " ".join(ci) and "torch==2.13.0" in " ".join(ci)
