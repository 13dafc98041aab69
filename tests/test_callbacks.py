"""TensorBoard events of a run stored on S3 are copied next to its checkpoints (moto on loopback)."""

from __future__ import annotations

import glob
import os

from dynamonet.train.callbacks import TensorBoardCallback


def test_events_of_an_s3_run_are_uploaded_after_every_report(tmp_path, s3_server):
    bucket = s3_server.make_bucket("tb")
    cb = TensorBoardCallback(str(tmp_path / "events"), f"{bucket}/runs/r1/tensorboard", s3_server.endpoint)
    s3 = s3_server.client()
    name = bucket.removeprefix("s3://")
    for epoch in (1, 2):
        cb.after_report(None, [{"epoch": epoch, "train/loss": 1.0 / epoch, "val/top1": 0.5, "run": "text"}], None)
        (local,) = glob.glob(str(tmp_path / "events" / "events.out.tfevents.*"))
        objects = s3.list_objects_v2(Bucket=name, Prefix="runs/r1/tensorboard/").get("Contents", [])
        assert [o["Key"].rsplit("/", 1)[1] for o in objects] == [os.path.basename(local)]
        assert objects[0]["Size"] == os.path.getsize(local)          # the whole file, after each report


def test_local_runs_are_not_uploaded_and_the_callback_pickles_without_its_writer(tmp_path):
    import pickle

    cb = TensorBoardCallback(str(tmp_path / "events"))
    cb.after_report(None, [{"epoch": 1, "train/loss": 0.5}], None)
    assert glob.glob(str(tmp_path / "events" / "events.out.tfevents.*"))
    clone = pickle.loads(pickle.dumps(cb))
    assert clone._writer is None and clone.logdir == cb.logdir and clone.upload_uri == ""
