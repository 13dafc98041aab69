"""Video data: ingest to Parquet shards, the synthetic motion dataset, and the Ray Data clip stream.

    shards.py      schema and manifest (storage itself: dynamonet/storage.py)
    sources.py     UCF101 / HMDB51 / Kinetics / class-folder / unlabeled annotation parsers
    encode.py      PyAV transcode to the canonical H.264 format, video writer
    ingest.py      plan → one Ray task per shard → rejected.jsonl → manifest.json (last)
    synthetic.py   generated datasets, cached by config: motion (13 global motions, the embedded
                   default) and, in synthetic_subtle.py, the subtle benchmark set
    subset.py      data.label_fraction: stratified labeled / unlabeled shares (paper Table 2);
                   data.holdout_*: validation held out of the training split (UCF101 groups, per class)
    sampling.py    clip windows in time (paper §4.3)
    transforms.py  5-crop + flip on uint8 (paper §4.3)
    decode.py      ClipDecoder: shard rows → clip rows with decord
    dataset.py     open_dataset / build_clip_dataset (Ray Data)

Only ``ingest`` (lazily) and ``dataset`` import Ray. The names below are resolved on first use so
that ``import dynamonet.data.sampling`` (or ``transforms``, ``decode``, ...) never pulls Ray in.
See docs/data.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_clip_dataset": "dynamonet.data.dataset",
    "open_dataset": "dynamonet.data.dataset",
    "check_split": "dynamonet.data.dataset",
    "ClipDatasetInfo": "dynamonet.data.dataset",
    "ensure_synthetic_dataset": "dynamonet.data.synthetic",
    "ClipDecoder": "dynamonet.data.decode",
    "STATUS_OK": "dynamonet.data.decode",
    "STATUS_PADDING": "dynamonet.data.decode",
    "STATUS_CORRUPT": "dynamonet.data.decode",
    "Manifest": "dynamonet.data.shards",
    "read_manifest": "dynamonet.data.shards",
    "IngestOptions": "dynamonet.data.ingest",
    "run_ingest": "dynamonet.data.ingest",
    "TranscodeSettings": "dynamonet.data.encode",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dynamonet.data' has no attribute {name!r}")
