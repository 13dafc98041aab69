"""Ray Tune sweeps of DynamoNet: α/β, dynamic-filter size and clip length (paper §3.1, §3.2).

Every trial is a real training run with the same code as pipelines/train_joint.py (a TorchTrainer
driven from a Tune function trainable), early-stopped by ASHA on validation top-1. With no
arguments it runs the small default space on the embedded dataset.

    python tune/sweep.py                                   # tune/spaces/default.yaml
    python tune/sweep.py --space tune/spaces/paper.yaml --set data.root=s3://bucket/ucf101-s1 \\
        --workers-per-trial 4 --gpus-per-trial 1 --concurrent 2
    python tune/sweep.py --name default --resume           # continue an interrupted sweep

Outputs in <run.storage_path>/<name>/: results.csv, best_config.yaml (for train_joint.py --config),
plot_<param>.png; TensorBoard: tensorboard --logdir <run.storage_path>
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a job working dir

from dynamonet.cli import check_set_items, fail

DEFAULT_SPACE = str(Path(__file__).resolve().parent / "spaces" / "default.yaml")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default=DEFAULT_SPACE, help="search space YAML (default: %(default)s)")
    p.add_argument("--name", default="", help="sweep name (default: the space's); the same name resumes it")
    p.add_argument("--resume", action="store_true", help="continue the sweep named --name (error if there is none)")
    p.add_argument("--force", action="store_true", help="resume even if the space or base config changed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base config key")
    p.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial (train.num_workers)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial worker; > 0 turns on train.use_gpu")
    p.add_argument("--concurrent", type=int, help="trials running at once (space's max_concurrent)")
    p.add_argument("--num-samples", type=int, help="repeats of the grid / random draws (space's num_samples)")
    p.add_argument("--grace-period", type=int, help="ASHA grace period in epochs (space's scheduler.grace_period)")
    p.add_argument("--storage-path", help="where the sweep and its trials go (run.storage_path)")
    args = p.parse_args(argv)
    from dynamonet.sweep import done_line, load_space, run_sweep

    try:
        overrides = check_set_items(args.set)
    except ValueError as e:
        fail(str(e))
    if args.workers_per_trial:
        overrides.append(f"train.num_workers={args.workers_per_trial}")
    if args.gpus_per_trial:
        overrides += ["train.use_gpu=true", f"train.gpus_per_worker={args.gpus_per_trial}"]
    if args.storage_path:
        overrides.append(f"run.storage_path={args.storage_path}")
    try:
        space, base = load_space(args.space, overrides)
        space.name = args.name or space.name
        space.max_concurrent = args.concurrent or space.max_concurrent
        space.num_samples = args.num_samples or space.num_samples
        print(f"[sweep] {space.name}: {space.num_trials()} trials (grid × samples) of recipe {space.recipe!r}, "
              f"{space.max_concurrent} at a time, {base.train.num_workers} worker(s) each", flush=True)
        summary = run_sweep(space, base, resume=args.resume, force=args.force, grace_period=args.grace_period)
    except ValueError as e:
        fail(str(e))
    if summary["best"] is None:
        fail(f"sweep {space.name!r}: no trial reported {space.metric} ({summary['trials']} trials; "
             f"see {summary['results']})", code=1)
    print(done_line(summary, space), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
