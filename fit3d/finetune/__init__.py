"""Stage 2: fine-tune a 2D backbone on rendered 3D-aware features (single process or torchrun/DDP).

``finetune(scene_dirs, backbone, out, FinetuneConfig())`` trains; ``load_finetuned(out)`` /
``load_assembled(out)`` (= ``fit3d.load(out)``) read the result back.
"""

from fit3d.finetune.config import FinetuneConfig


def finetune(*args, **kwargs):
    """See :func:`fit3d.finetune.trainer.finetune`."""
    from fit3d.finetune.trainer import finetune as _finetune

    return _finetune(*args, **kwargs)


def load_finetuned(*args, **kwargs):
    from fit3d.finetune.assembled import load_finetuned as _f

    return _f(*args, **kwargs)


def load_assembled(*args, **kwargs):
    from fit3d.finetune.assembled import load_assembled as _f

    return _f(*args, **kwargs)


__all__ = ["FinetuneConfig", "finetune", "load_finetuned", "load_assembled"]
