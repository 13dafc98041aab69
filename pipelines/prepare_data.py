"""Ingest raw videos + annotations into canonical video shards (a local directory or s3://bucket/prefix).

    python pipelines/prepare_data.py --source ucf101 --input UCF-101 --annotations ucfTrainTestlist \\
        --split 1 --output s3://my-bucket/ucf101-split1
    python pipelines/prepare_data.py --source synthetic --output /data/synthetic

Transcodes every video to H.264 (short side 128, keyframe every --gop frames, no B-frames) in
parallel Ray tasks, one per shard; bad files go to rejected.jsonl with the reason; manifest.json is
written last. Re-running the same command after an interruption only does the missing shards.
S3: endpoint from --s3-endpoint, else AWS_ENDPOINT_URL, else AWS; credentials from the standard
AWS variables. See docs/data.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a job working dir

from dynamonet.config import SyntheticConfig
from dynamonet.data.encode import TranscodeSettings
from dynamonet.data.ingest import IngestOptions, for_cluster, run_ingest
from dynamonet.data.sources import SOURCES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, choices=SOURCES, help="layout of --input and its annotations")
    p.add_argument("--input", default="", help="root of the raw videos (local dir or s3://...); for synthetic, "
                                               "where to write the generated raw videos (default: a temp dir)")
    p.add_argument("--annotations", default="", help="ucf101: ucfTrainTestlist dir; hmdb51: dir of "
                                                     "<class>_test_split<N>.txt; kinetics: CSV file or dir of CSVs")
    p.add_argument("--output", required=True, help="shard root: local directory or s3://bucket/prefix")
    p.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="official split (ucf101, hmdb51)")
    p.add_argument("--short-side", type=int, default=None,
                   help="canonical short side in pixels (default 128; synthetic: its size; 0 = keep)")
    p.add_argument("--fps", type=float, default=0.0, help="resample to this frame rate (0 = keep the source rate)")
    p.add_argument("--gop", type=int, default=16, help="keyframe interval in frames (about one clip)")
    p.add_argument("--crf", type=int, default=23, help="x264 constant rate factor (lower = better, larger)")
    p.add_argument("--videos-per-shard", type=int, default=64, help="videos per Parquet shard (one Ray task each)")
    p.add_argument("--s3-endpoint", default="", help="S3 endpoint URL or host:port (default: AWS_ENDPOINT_URL, "
                                                     "else AWS)")
    p.add_argument("--seed", type=int, default=0, help="seed of the video → shard assignment")
    p.add_argument("--executor", default="ray", choices=("ray", "threads", "local"),
                   help="ray: one Ray task per shard; threads/local: on this machine without Ray")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs of a new local Ray (0 = all cores)")
    p.add_argument("--ray-address", default="", help="Ray cluster to use (default: RAY_ADDRESS or a new local Ray)")
    p.add_argument("--synthetic", action="append", default=[], metavar="KEY=VALUE",
                   help="synthetic dataset setting, repeatable: num_classes, train_per_class, val_per_class, "
                        "num_frames, size, fps, seed")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    return p


def synthetic_config(items: list[str]) -> SyntheticConfig:
    """SyntheticConfig from KEY=VALUE strings (numbers parsed)."""
    kw: dict[str, float | int] = {}
    known = set(SyntheticConfig.__dataclass_fields__)
    for item in items:
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in known:
            raise ValueError(f"--synthetic: unknown key {key!r} (known: {', '.join(sorted(known))})")
        kw[key] = float(value) if key == "fps" else int(value)
    return SyntheticConfig(**kw)


def _init_ray(args: argparse.Namespace) -> None:
    """Join --ray-address / RAY_ADDRESS (a job), or start a local Ray (never attach to another one)."""
    import ray

    if ray.is_initialized():
        return
    address = args.ray_address or os.environ.get("RAY_ADDRESS") or ""
    if address:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    else:
        ray.init(address="local", num_cpus=args.num_cpus or None, include_dashboard=False, log_to_driver=True,
                 configure_logging=False)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = TranscodeSettings(short_side=128 if args.short_side is None else args.short_side, fps=args.fps,
                                 gop=args.gop, crf=args.crf)
    with tempfile.TemporaryDirectory(prefix="dynamonet-synthetic-") as tmp:
        try:
            if args.source == "synthetic":
                from dynamonet.data.synthetic import generate_videos

                cfg = synthetic_config(args.synthetic)
                args.input = args.input or tmp
                print(f"generating {generate_videos(cfg, args.input)} synthetic videos in {args.input}", flush=True)
                if args.short_side is None:
                    settings = TranscodeSettings(short_side=cfg.size, fps=args.fps, gop=args.gop, crf=args.crf)
            if not args.input:
                raise ValueError("--input: required for this source")
            opts = IngestOptions(source=args.source, input=args.input, output=args.output,
                                 annotations=args.annotations, split=args.split, transcode=settings,
                                 videos_per_shard=args.videos_per_shard, endpoint=args.s3_endpoint, seed=args.seed,
                                 labels_hflip_invariant=args.source != "synthetic")
            if args.executor == "ray":
                _init_ray(args)
                opts = for_cluster(opts, generated=args.source == "synthetic")
            summary = run_ingest(opts, executor=args.executor, progress=not args.no_progress)
        except (ValueError, FileNotFoundError) as e:
            print(f"prepare_data: error: {e}", file=sys.stderr)
            return 2
    return 0 if summary.manifest is not None else 1


if __name__ == "__main__":
    sys.exit(main())
