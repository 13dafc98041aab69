"""The data library below the Ray edge imports (and builds the synthetic dataset) without Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import sys, tempfile
sys.modules["ray"] = None  # any `import ray` now raises ImportError
import dynamonet.data
from dynamonet.data import sampling, transforms, decode, synthetic, shards, sources, encode, ingest
from dynamonet.config import SyntheticConfig
cfg = SyntheticConfig(num_classes=2, train_per_class=1, val_per_class=1, num_frames=6, size=32)
with tempfile.TemporaryDirectory() as tmp:
    root = dynamonet.data.ensure_synthetic_dataset(cfg, tmp)
    manifest = shards.read_manifest(root)
    assert manifest.counts["videos"] == 4, manifest.counts
assert not any(m == "ray" or m.startswith("ray.") for m in sys.modules if sys.modules[m] is not None)
print("ok")
"""


def test_data_modules_import_and_work_without_ray() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")
