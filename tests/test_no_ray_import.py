"""The model library, the losses and the data generators import without Ray (DESIGN.md: Ray stays at the edge)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import sys
sys.modules["ray"] = None  # any `import ray` now raises ImportError
import dynamonet.models, dynamonet.losses
import dynamonet.models.summary, dynamonet.models.stfn
import dynamonet.data.synthetic, dynamonet.data.synthetic_subtle, dynamonet.data.synthetic_order
import dynamonet.data.subset, dynamonet.data.sampling, dynamonet.features
model = dynamonet.models.build_model("r3d_tiny", clip_len=2, num_classes=2)
assert not any(m == "ray" or m.startswith("ray.") for m in sys.modules if sys.modules[m] is not None)
print("ok")
"""


def test_models_and_losses_import_without_ray() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
