"""Joint training of DynamoNet: α·FP + β·CE (paper §3.2), on Ray Train.

With no arguments it runs the embedded default: a local Ray, the generated motion-defined dataset
(cached after the first run), a small DynamoNet with 2 DDP workers on CPU, then video-level
evaluation, ending with a line ``DONE ... val_top1=... val_top5=... fp_ssim=... wall_time=...``.

    python pipelines/train_joint.py --help
    python pipelines/train_joint.py --config ucf101 --data s3://bucket/ucf101-s1 --init-from runs/pretrain-x
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a job working dir

from dynamonet.train.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:], description=__doc__.split("\n")[0], default_recipe="embedded"))
