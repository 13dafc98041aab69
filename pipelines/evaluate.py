"""Evaluate DynamoNet checkpoints: video-level top-1/top-5 (mean of every non-overlapping clip's
scores, centre crop; paper §4.3), clip accuracy, per-class accuracy, a confusion-matrix PNG, and
frame-prediction SSIM/PSNR next to the copy-last-frame baseline (paper Tab. 3). An STFN checkpoint
(train_stfn.py) is scored beside the clip mean of its DynamoNet on the same videos: the split's
clip features are extracted (or reused) once, and both read them.

    python pipelines/evaluate.py --checkpoint runs/embedded-joint-20261123-120000
    python pipelines/evaluate.py --checkpoint RUN_SPLIT1 --checkpoint RUN_SPLIT2 --checkpoint RUN_SPLIT3 --split test
    python pipelines/evaluate.py --checkpoint runs/embedded_stfn-stfn-20261205-120000   # STFN and the clip mean

A checkpoint is a run directory (its latest epoch), a checkpoint_epochNNNN directory or a
checkpoint.pt file, local or s3://. With several, each is evaluated on the dataset of its own
config (or on --data, given once per checkpoint) and the mean over them is printed.

Every clip of every video is scored (data.max_eval_clips=0), whatever cap the checkpoint's
config used for per-epoch validation; --set data.max_eval_clips=N caps it at N evenly spread clips.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a job working dir

from dynamonet.cli import fail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, help="run dir, checkpoint dir or .pt (repeatable)")
    p.add_argument("--data", action="append", default=[], help="dataset root per checkpoint (default: its config's)")
    p.add_argument("--split", default="", help="split to evaluate (default: the config's data.val_split, else val; "
                                           "test when it is holdout)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="device for the model (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=0, help="clips per batch (default: the config's)")
    p.add_argument("--out", default="", help="report directory (default: <run>/eval/<split scored>; with several, "
                                             "<out>/splitN)")
    p.add_argument("--s3-endpoint", default="", metavar="URL",
                   help="S3 endpoint of s3:// checkpoints and data, as in train_joint.py; also sets "
                        "data.s3_endpoint (default: AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the checkpoint's config, e.g. data.max_eval_clips=10 (default 0: every clip)")
    args = p.parse_args(argv)
    if args.data and len(args.data) != len(args.checkpoint):
        fail("--data: give it once per --checkpoint")
    from dynamonet.eval import checkpoint_kind, eval_overrides, evaluate_checkpoint, mean_over_splits
    from dynamonet.train.stfn import evaluate_stfn

    results = []
    try:
        for i, ckpt in enumerate(args.checkpoint):
            overrides = eval_overrides(args.set, args.data[i] if args.data else "", args.s3_endpoint)
            out = args.out and (os.path.join(args.out, f"split{i + 1}") if len(args.checkpoint) > 1 else args.out)
            if checkpoint_kind(ckpt, args.s3_endpoint) == "stfn":
                r = evaluate_stfn(ckpt, split=args.split, device=args.device, endpoint=args.s3_endpoint,
                                  out_dir=out or None, overrides=overrides)
            else:
                r = evaluate_checkpoint(ckpt, split=args.split, overrides=overrides, device=args.device,
                                        batch_size=args.batch_size, out_dir=out or None, endpoint=args.s3_endpoint)
            print(json.dumps({k: r[k] for k in ("checkpoint", "split", "num_videos", "num_clips", "clips_per_video",
                                                "metrics")}, indent=1))
            results.append(r)
    except ValueError as e:
        fail(str(e))
    mean = mean_over_splits(results)
    if len(results) > 1:
        print(json.dumps({"mean_over_splits": mean}, indent=1))
    clips = sum(r["clips_per_video"] for r in results) / len(results)
    stfn = "eval/stfn_top1" in mean  # then eval/top1 is the clip mean of the same videos
    names = {"eval/top1": "clip_mean_top1", "eval/top5": "clip_mean_top5"} if stfn else {}
    print("EVAL " + " ".join(f"{names.get(k, k.split('/', 1)[1])}={mean[k]:.4f}" for k in
                             ("eval/stfn_top1", "eval/top1", "eval/stfn_top5", "eval/top5", "eval/clip_top1",
                              "eval/fp_ssim", "eval/copy_last_ssim")
                             if k in mean) + f" clips_per_video={clips:.1f}", flush=True)
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
