"""fit3d: FiT3D (Yue et al., ECCV 2024) -- 3D-aware fine-tuning of 2D vision foundation models.

Stages: ``fit3d.lift`` (features -> feature Gaussians), ``fit3d.finetune`` (train the 2D
model on rendered 3D-aware features), ``fit3d.probe`` (linear probes, correspondence).
"""

__version__ = "0.1.0"


def load(path, **kwargs):
    """Load a fit3d fine-tuned folder as a feature extractor giving concat(original, fine-tuned)."""
    from fit3d.finetune.assembled import load_assembled

    return load_assembled(path, **kwargs)
