"""Predict the action in one video file with a DynamoNet checkpoint (top-k classes).

    python pipelines/predict.py VIDEO --checkpoint runs/<run> [--topk 5] [--save-figure out.png]
    python pipelines/predict.py s3://bucket/videos/x.mp4 --checkpoint s3://bucket/runs/<run>/checkpoint_best

The video goes through the same transcode and clip decoder as training and evaluation; its score
is the mean over every non-overlapping clip (paper §4.3). ``--save-figure`` draws ground-truth
frames, the frames predicted by the dynamic motion filters, and their difference (paper Fig. 3).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a job working dir

from dynamonet.cli import fail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("video", metavar="VIDEO", help="a video file (any format FFmpeg reads), local or s3://")
    p.add_argument("--checkpoint", required=True, help="run dir, checkpoint dir or checkpoint.pt (local or s3://)")
    p.add_argument("--topk", type=int, default=5, help="classes to print (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="device for the model (default: %(default)s)")
    p.add_argument("--s3-endpoint", default="", metavar="URL",
                   help="S3 endpoint of an s3:// --checkpoint, as in train_joint.py (default: AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--save-figure", default="", metavar="PNG", help="write the frame-prediction figure here (local or "
                                                                     "s3://)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    from dynamonet.predict import predict_video

    try:
        r = predict_video(args.video, args.checkpoint, topk=args.topk, device=args.device,
                          save_figure=args.save_figure, endpoint=args.s3_endpoint)
    except ValueError as e:
        fail(str(e))
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"{r['video']}: {r['clips']} clips")
    for rank, (name, prob) in enumerate(r.get("top", []), 1):
        print(f"  {rank}. {name:<30s} {prob:.3f}")
    if "fp_mae" in r:
        print(f"  frame prediction MAE {r['fp_mae']:.4f} (copy-last-frame {r['copy_last_mae']:.4f})")
    if r.get("figure"):
        print(f"  figure: {r['figure']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
