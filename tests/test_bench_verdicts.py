"""The verdict rule shared by the bench scripts (bench/_verdict.py): no Ray, no torch."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "_verdict.py"
_SPEC = importlib.util.spec_from_file_location("bench_verdict", _PATH)
verdict = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(verdict)


@pytest.mark.parametrize(("value", "op", "target", "expected"), [
    (1.155, "<=", 1.15, False),    # over an upper limit, however close: a fail, not rounded to 1.15
    (1.1500001, "<=", 1.15, False),
    (1.15, "<=", 1.15, True),      # at the limit
    (1.104, "<=", 1.15, True),
    (0.8499, ">=", 0.85, False),   # under a lower limit
    (0.85, ">=", 0.85, True),
    (2.72, ">=", 1.5, True),
    (math.nan, ">=", 1.0, False),  # a broken reading is no pass
])
def test_measured_target_is_compared_exactly(value: float, op: str, target: float, expected: bool) -> None:
    t = verdict.check("x", value, op, target)
    assert t["pass"] is expected
    assert t["value"] == value or math.isnan(value)


def test_unmeasured_or_reported_is_null_never_pass() -> None:
    skipped = verdict.check("cuda: batched >= 20x loop", None, ">=", 20.0)
    reported = verdict.check("cuda ratio (reported)", 1.07, None, None)
    assert skipped["pass"] is None and reported["pass"] is None
    summary = verdict.summarize([skipped, reported])
    assert summary["all_pass"] is None
    assert summary["not_measured"] == ["cuda: batched >= 20x loop", "cuda ratio (reported)"]


def test_all_pass_counts_only_measured_targets() -> None:
    ok = verdict.check("a", 0.9, ">=", 0.85)
    fail = verdict.check("b", 1.155, "<=", 1.15)
    null = verdict.check("c", None, ">=", 1.0)
    passing = verdict.summarize([ok, null])
    assert passing["all_pass"] is True and passing["not_measured"] == ["c"]
    failing = verdict.summarize([ok, fail, null])
    assert failing["all_pass"] is False and failing["not_measured"] == ["c"]
    assert json.loads(json.dumps(failing))["targets"][2]["pass"] is None   # JSON null


def test_bad_op_or_target_without_op_is_rejected() -> None:
    with pytest.raises(ValueError, match="op must be"):
        verdict.check("x", 1.0, "<", 1.0)
    with pytest.raises(ValueError, match="without an op"):
        verdict.check("x", 1.0, None, 1.0)
