"""DynamoNet models: 3D ResNet/ResNeXt/STC backbones, dynamic motion filters, heads, STFN (paper §3–4).

Pure PyTorch, no Ray. Entry points::

    from dynamonet.models import build_model, list_models
    model = build_model("r3d_tiny", mode="joint", num_classes=13, clip_len=8)
    out = model(x)            # x (B, 3, T, H, W) in [0, 1] → DynamoOutput(logits, pred, filters)
"""

from ..config import MODES
from .dynamonet import DynamoNet, DynamoOutput
from .motion import apply_dynamic_filters
from .registry import (
    LoadReport,
    build_model,
    build_model_from_config,
    list_models,
    load_matching_weights,
    register_model,
)
from .stfn import STFN

__all__ = [
    "MODES",
    "STFN",
    "DynamoNet",
    "DynamoOutput",
    "LoadReport",
    "apply_dynamic_filters",
    "build_model",
    "build_model_from_config",
    "list_models",
    "load_matching_weights",
    "register_model",
]
