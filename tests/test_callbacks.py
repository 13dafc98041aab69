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


def test_every_run_carries_an_hparams_session_with_its_hyperparameters(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    cb = TensorBoardCallback(str(tmp_path / "tb"), hparams={"model.kernel_size": 7, "loss.alpha": 0.1,
                                                            "model.arch": "r3d_tiny", "train.worker_resources": {}})
    for epoch in (1, 2):
        cb.after_report(None, [{"epoch": epoch, "val/top1": 0.25 * epoch}], None)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    data = [HParamsPluginData.FromString(c) for c in acc.PluginTagToContent("hparams").values()]
    session = next(d.session_start_info for d in data if d.HasField("session_start_info"))
    experiment = next(d.experiment for d in data if d.HasField("experiment"))
    assert session.hparams["model.kernel_size"].number_value == 7 and session.hparams["loss.alpha"].number_value == 0.1
    assert session.hparams["model.arch"].string_value == "r3d_tiny" and session.hparams["train.worker_resources"].string_value == "{}"
    assert "val/top1" in {m.name.tag for m in experiment.metric_infos}  # judged by the scalars of the run
    assert [e.value for e in acc.Scalars("val/top1")] == [0.25, 0.5]
