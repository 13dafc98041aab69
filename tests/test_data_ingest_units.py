"""Ingest driver parts that need no Ray: the progress line and the bound on submitted shard tasks."""

from __future__ import annotations

import re

from dynamonet.data.ingest import Progress, ShardResult, _in_flight_limit


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("ingest [")]


def test_progress_counts_listing_rejections_and_rates_only_transcoded_videos(capsys) -> None:
    p = Progress(total=4, enabled=True, rejected=3)        # e.g. 3 CSV lines whose file is missing
    p.update(ShardResult("train/shard-00000.parquet", "train", num_videos=64, reused=True))
    p.update(ShardResult("train/shard-00001.parquet", "train", num_videos=64, reused=True))
    reused_only = _lines(capsys)
    assert len(reused_only) == 2 and all("| 3 rejected |" in line for line in reused_only)
    assert all(re.search(r"\| 0\.0 videos/s \| ETA 0 s$", line) for line in reused_only)  # a resume: no fake speed
    p.update(ShardResult("train/shard-00002.parquet", "train", num_videos=10,
                         rejected=[{"source": "x.mp4", "split": "train", "reason": "truncated"}]))
    (line,) = _lines(capsys)
    assert "3/4 shards (2 reused) | 138 videos | 4 rejected |" in line
    assert float(re.search(r"\| ([\d.]+) videos/s", line).group(1)) > 0


def test_submitted_shard_tasks_are_bounded_by_the_cluster_size() -> None:
    assert _in_flight_limit({}) == _in_flight_limit({"CPU": 2.0}) == 16      # at least a few waves
    assert _in_flight_limit({"CPU": 256.0, "GPU": 8.0}) == 512                # twice the cores
