"""Score every clip of every video of a split with a DynamoNet checkpoint, for video-level fusion.

A Ray Data batch-inference job: decoders (Ray Data tasks, placed as in training) feed model
actors (CPU, or one GPU each with --device cuda) that compute each clip's appearance (AR) and
motion (DMR) vectors and class scores; the clips of each video are gathered in time order and
written as one Parquet row per video, with a manifest (features.json, written last). The
format is in docs/model.md; train_stfn.py runs this itself when it needs features.

    python pipelines/extract_features.py --checkpoint runs/my-joint-run --split train --split val
    python pipelines/extract_features.py --checkpoint s3://b/runs/ucf-joint --split test --device cuda --actors 8

Output: <run>/features/<split>/ next to the checkpoint (local or s3://), or --out DIR/<split>.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a job working dir

from dynamonet.cli import fail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="joint or no_fp DynamoNet: run dir, checkpoint dir or .pt")
    p.add_argument("--split", action="append", default=[], help="split to score (repeatable; default: val; "
                                                                 "holdout = the part held out of the training split)")
    p.add_argument("--training-videos", action="store_true",
                   help="only the videos the training stream reads (the training split without its held-out part)")
    p.add_argument("--out", default="", help="features directory (default: <run>/features); each split in <out>/<split>")
    p.add_argument("--device", default="cpu", help="cpu | cuda (one GPU per scoring actor)")
    p.add_argument("--actors", type=int, default=1, help="model replicas scoring at once (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=0, help="clips per model call (default: the checkpoint's)")
    p.add_argument("--data", default="", help="dataset root (default: the checkpoint config's)")
    p.add_argument("--s3-endpoint", default="", metavar="URL", help="S3 endpoint (default: AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--no-reuse", action="store_true", help="extract again even if the same features exist")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the checkpoint's config")
    args = p.parse_args(argv)
    if args.actors < 1:
        fail("--actors: must be >= 1")
    from dynamonet.eval import eval_overrides
    from dynamonet.features import default_features_dir, extract_features, features_uri

    try:
        overrides = eval_overrides(args.set, args.data, args.s3_endpoint)
        base = args.out or default_features_dir(args.checkpoint)
        for split in args.split or ["val"]:
            meta = extract_features(args.checkpoint, split, features_uri(base, split), overrides=overrides,
                                    device=args.device, batch_size=args.batch_size, actors=args.actors,
                                    training_videos=args.training_videos, endpoint=args.s3_endpoint,
                                    reuse=not args.no_reuse)
            print(json.dumps({k: meta[k] for k in ("uri", "split", "num_videos", "num_clips", "files", "reused")}))
    except ValueError as e:
        fail(str(e))
    except RuntimeError as e:
        fail(str(e), code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
