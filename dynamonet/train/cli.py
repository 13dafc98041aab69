"""Shared ``main`` of the training entry points (``pipelines/train_joint.py``, ``pipelines/pretrain.py``,
``pipelines/train_stfn.py``).

Parses the recipe and flags (:mod:`dynamonet.cli`), runs :func:`dynamonet.train.ray_train.run_training`
and prints the final line. Configuration problems exit with status 2 and one ``error:`` line before
any worker starts; a failed run exits with status 1. ``DYNAMONET_DEBUG=1`` re-raises with the
traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from dynamonet.cli import build_parser, fail, parse_config
from dynamonet.config import Config

EPILOG = """examples:
  %(prog)s                                        # the embedded default (local Ray, synthetic data, CPU)
  %(prog)s --config ucf101 --data s3://bucket/ucf101-split1 --use-gpu --num-workers 8
  %(prog)s --name my-run                          # the same name again resumes my-run
  %(prog)s --set optim.lr=0.05 --set loss.alpha=0 # any key of the recipe
  ray job submit --working-dir . -- python %(prog)s --config kinetics400 --use-gpu --num-workers 8
"""


def train_main(argv: Sequence[str] | None, *, description: str, default_recipe: str,
               mode: str | None = None, epilog: str = EPILOG,
               job: tuple[Callable[[Config], dict[str, Any]], Callable[[dict[str, Any]], str]] | None = None) -> int:
    """Run one training job from the command line; returns the process exit code.

    ``job`` is ``(run, final_line)``: DynamoNet's :func:`~dynamonet.train.ray_train.run_training`
    by default (train_stfn.py passes STFN's)."""
    parser = build_parser(description, default_recipe, epilog=epilog)
    args, cfg = parse_config(parser, argv)
    if mode is not None and cfg.model.mode != mode:
        cfg = cfg.override("model.mode", mode)
    if job is None:
        from dynamonet.train.ray_train import final_line, run_training

        job = (run_training, final_line)
    run, final_line = job

    try:
        result = run(cfg)
    except ValueError as e:
        if os.environ.get("DYNAMONET_DEBUG"):
            raise
        fail(str(e), code=2)
    except Exception as e:  # a failed run: one line, non-zero exit
        if os.environ.get("DYNAMONET_DEBUG"):
            raise
        fail(f"{type(e).__name__}: {e}" if not isinstance(e, RuntimeError) else str(e), code=1)
    finally:
        _shutdown_ray()
    print(final_line(result), flush=True)
    return 0


def _shutdown_ray() -> None:
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
