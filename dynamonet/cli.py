"""Command-line layer shared by every entry point in ``pipelines/`` and ``tune/``.

    --config recipe.yaml  ──►  --section.field VALUE / short aliases  ──►  --set a.b=v  ──►  Config

Every leaf of :class:`dynamonet.config.Config` gets a ``--section.field`` flag whose help text is
the field's own, so ``--help`` documents every option of a recipe. A few frequent ones also have
short aliases (``--epochs``, ``--name``, ...). Errors in the configuration are reported as a single
line ``error: <field>: <reason>`` with exit status 2, before Ray is touched.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dynamonet.config import Config, field_help, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "pipelines" / "recipes"

# short alias -> config key
ALIASES: dict[str, tuple[str, str]] = {
    "--model": ("model.arch", "backbone architecture (alias of --model.arch)"),
    "--mode": ("model.mode", "pretrain | joint | no_fp | backbone (alias of --model.mode)"),
    "--data": ("data.root", "dataset root: local dir or s3://bucket/prefix (alias of --data.root)"),
    "--s3-endpoint": ("data.s3_endpoint", "S3 endpoint override for data and storage (alias of --data.s3_endpoint)"),
    "--epochs": ("train.epochs", "training epochs (alias of --train.epochs)"),
    "--num-workers": ("train.num_workers", "Ray Train workers (alias of --train.num_workers)"),
    "--batch-size": ("data.batch_size", "clips per worker per step (alias of --data.batch_size)"),
    "--clip-len": ("data.clip_len", "frames per clip T (alias of --data.clip_len)"),
    "--kernel-size": ("model.kernel_size", "dynamic filter size s (alias of --model.kernel_size)"),
    "--alpha": ("loss.alpha", "frame-prediction loss weight (alias of --loss.alpha)"),
    "--beta": ("loss.beta", "classification loss weight (alias of --loss.beta)"),
    "--lr": ("optim.lr", "learning rate at optim.lr_batch (alias of --optim.lr)"),
    "--name": ("run.name", "run name; the same name resumes the run (alias of --run.name)"),
    "--storage-path": ("run.storage_path", "checkpoint/log storage: dir or s3://... (alias of --run.storage_path)"),
    "--init-from": ("run.init_from", "initialise weights from this checkpoint (alias of --run.init_from)"),
}
FLAGS = {
    "--use-gpu": ("train.use_gpu", "train on GPUs, one per worker (alias of --train.use_gpu true)"),
    "--resume": ("run.resume", "continue an interrupted run (alias of --run.resume true)"),
    "--force": ("run.force", "resume even if the stored config differs (alias of --run.force true)"),
}


def recipe_path(name_or_path: str) -> str:
    """Resolve ``embedded`` to ``pipelines/recipes/embedded.yaml``; paths are returned as given."""
    if os.path.isfile(name_or_path) or name_or_path.endswith((".yaml", ".yml")):
        return name_or_path
    return str(RECIPES / f"{name_or_path}.yaml")


def build_parser(description: str, default_recipe: str | None, epilog: str = "") -> argparse.ArgumentParser:
    """An argparse parser with ``--config``, ``--set``, aliases and one flag per config field."""
    p = argparse.ArgumentParser(description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=default_recipe,
                   help=f"recipe YAML or a name in pipelines/recipes/ (default: {default_recipe or 'none'})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.05 (repeatable; applied last)")
    common = p.add_argument_group("common options")
    for flag, (key, help_) in ALIASES.items():
        common.add_argument(flag, dest=f"alias:{key}", default=argparse.SUPPRESS, metavar="V", help=help_)
    for flag, (key, help_) in FLAGS.items():
        common.add_argument(flag, dest=f"flag:{key}", action="store_true", default=argparse.SUPPRESS, help=help_)
    every = p.add_argument_group("every config key (override the recipe)")
    for key, help_ in field_help(Config).items():
        every.add_argument(f"--{key}", dest=f"key:{key}", default=argparse.SUPPRESS, metavar="V", help=help_)
    return p


def check_set_items(items: Sequence[str]) -> list[str]:
    """The ``--set`` items as given; raises ``ValueError`` for one that is not ``KEY=VALUE``."""
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
    return list(items)


def config_from_args(args: argparse.Namespace) -> Config:
    """Recipe → per-key flags and aliases → ``--set`` items, validated."""
    overrides: list[str] = []
    for dest, value in vars(args).items():
        if dest.startswith(("key:", "alias:")):
            overrides.append(f"{dest.split(':', 1)[1]}={value}")
        elif dest.startswith("flag:") and value:
            overrides.append(f"{dest.split(':', 1)[1]}=true")
    overrides.extend(check_set_items(args.set))
    path = recipe_path(args.config) if args.config else None
    return load_config(path, overrides)


def parse_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
                 ) -> tuple[argparse.Namespace, Config]:
    """Parse ``argv``; a configuration error exits with one line ``error: ...`` and status 2."""
    args = parser.parse_args(argv)
    try:
        return args, config_from_args(args)
    except ValueError as e:
        fail(str(e))
        raise  # unreachable


def fail(message: str, code: int = 2) -> None:
    """Print a single-line error (no traceback) and exit."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(code)
