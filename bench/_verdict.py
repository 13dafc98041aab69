"""Verdicts of the bench targets: one rule for every script in ``bench/``.

A target is one JSON object ``{"name", "value", "op", "target", "pass"}``:

    value measured, op ">=" or "<=", target given  →  pass = value op target, compared exactly
                                                       (the unrounded value: 1.155 against
                                                       <= 1.15 is a fail)
    value None (not measured: no GPU, a part skipped) →  pass = null
    target None (a figure that is only reported)      →  pass = null

``null`` is never a pass. :func:`summarize` gives ``all_pass`` over the measured targets (false
if any is false, null when none was measured) and ``not_measured``, the names of the others.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


def check(name: str, value: float | None, op: str | None, target: float | None) -> dict[str, object]:
    """One target's verdict.

    Args:
        name: what is measured and the goal, in words.
        value: the reading, unrounded; None if it was not measured.
        op: ``">="`` (at least) or ``"<="`` (at most); None for a figure without a target.
        target: the limit; None for a figure that is only reported.

    Returns:
        ``{"name", "value", "op", "target", "pass"}``; ``pass`` is True or False for a measured
        value against a target (NaN fails), else None.
    """
    if op is not None and op not in OPS:
        raise ValueError(f"op must be one of {sorted(OPS)} or None, got {op!r}")
    if target is not None and op is None:
        raise ValueError(f"target {target!r} given without an op")
    verdict: bool | None = None
    if value is not None and target is not None and op is not None:
        verdict = False if math.isnan(value) else bool(OPS[op](value, target))
    return {"name": name, "value": value, "op": op, "target": target, "pass": verdict}


def summarize(targets: list[dict[str, object]]) -> dict[str, object]:
    """``{"targets", "all_pass", "not_measured"}`` for a bench's JSON.

    ``all_pass`` is False if any target failed, True if every measured target passed, None if no
    target was measured; ``not_measured`` lists the names of the targets whose ``pass`` is None.
    """
    measured = [t["pass"] for t in targets if t["pass"] is not None]
    return {"targets": targets, "all_pass": all(measured) if measured else None,
            "not_measured": [t["name"] for t in targets if t["pass"] is None]}
