"""Video-level fusion: train STFN (seeds/stfn-summary.txt) on DynamoNet's clip features, on Ray.

With no arguments it runs the embedded STFN path: a local Ray, the generated order-defined
dataset (classes that differ only in the order of two motions), the embedded DynamoNet fine-tuned
on it (both reused when they exist), every clip of every video scored (Ray Data), STFN trained on
the per-video AR/DMR sequences (Ray Train), ending with a line ``DONE ... stfn_top1=...
clip_mean_top1=...``: STFN's video top-1 beside the mean of the clip scores (paper §4.3) on the
same validation videos.

    python pipelines/train_stfn.py --help
    python pipelines/train_stfn.py --config ucf101 --data s3://bucket/ucf101-s1 \\
        --stfn.checkpoint s3://bucket/runs/ucf101-joint --storage-path s3://bucket/runs
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a job working dir

from dynamonet.train.cli import train_main

EPILOG = """examples:
  %(prog)s                                           # the embedded STFN path (local Ray, synthetic data, CPU)
  %(prog)s --stfn.checkpoint runs/my-joint-run       # STFN on the features of an existing DynamoNet
  %(prog)s --name my-stfn                            # the same name again resumes my-stfn
  %(prog)s --stfn.width 256 --stfn.depth 3           # any key of the recipe (stfn.*: docs/model.md)
  ray job submit --working-dir . -- python %(prog)s --config ucf101 --data s3://b/ucf101-s1 --use-gpu \\
      --storage-path s3://b/runs --stfn.checkpoint s3://b/runs/ucf101-joint
"""


def main(argv=None) -> int:
    from dynamonet.train.stfn import final_line, run_stfn

    return train_main(argv, description=__doc__.split("\n")[0], default_recipe="embedded_stfn", epilog=EPILOG,
                      job=(run_stfn, final_line))


if __name__ == "__main__":
    sys.exit(main())
