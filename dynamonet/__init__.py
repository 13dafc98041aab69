"""DynamoNet on Ray: dynamic motion filters and frame prediction for action recognition.

Paper: Diba et al., "DynamoNet: Dynamic Action and Motion Network", ICCV 2019 (arXiv 1904.11407).

Layout (Ray stays at the edge; ``dynamonet.models``, ``dynamonet.losses`` and the data transforms
and samplers import no Ray):

    dynamonet.config      one nested, validated config (YAML recipe → flags → dataclass)
    dynamonet.models      3D ResNet/ResNeXt/STC backbones, the DynamoNet heads, STFN, registry
    dynamonet.losses      Huber frame prediction, cross-entropy, α·FP + β·CE
    dynamonet.data        ingest to Parquet shards, synthetic motion dataset, decord clips, Ray Data
    dynamonet.train       Ray Train TorchTrainer driver, per-worker loop, checkpoints
    dynamonet.eval        video-level evaluation, SSIM/PSNR, confusion matrix
"""

__version__ = "0.1.0"
