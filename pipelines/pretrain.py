"""Self-supervised pretraining of DynamoNet by frame prediction alone (paper §3.3, §4.4).

The classification branch is detached (model.mode=pretrain); only the Huber frame-prediction loss
trains the backbone and the motion-filter branch. Labels, if the shards have any, are ignored.
With no arguments it pretrains on the embedded synthetic dataset. Fine-tune afterwards with
``pipelines/train_joint.py --init-from <this run>``.

    python pipelines/pretrain.py --config pretrain --data s3://bucket/youtube8m-unlabeled --use-gpu
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a job working dir

from dynamonet.train.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:], description=__doc__.split("\n")[0], default_recipe="embedded_pretrain",
                        mode="pretrain"))
