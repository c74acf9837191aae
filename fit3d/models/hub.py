"""The model hub: is it reachable, and the error that says how to work without it."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from fit3d.errors import ModelNotFoundError
from fit3d.models.registry import BackboneSpec

MODEL_PATH_ENV = "FIT3D_MODEL_PATH"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the model hub (``HF_ENDPOINT``) within ``timeout`` seconds?

    Checked before a hub download so an offline machine fails in seconds instead of sitting through
    transformers' retries; ``HF_HUB_OFFLINE=1`` answers no without trying.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_unreachable_error(spec: BackboneSpec, hub_id: str, detail: str = "") -> ModelNotFoundError:
    """The error for a hub id that cannot be downloaded: says how to point at a local folder instead."""
    why = f" ({detail})" if detail else " (no connection to the model hub, and not in the local hub cache)"
    return ModelNotFoundError(
        f"backbone '{spec.name}': could not load hub id '{hub_id}'{why}. Pass --model-path DIR or set "
        f"{MODEL_PATH_ENV}=DIR with a local folder in the hub layout (config.json + model.safetensors), e.g. "
        f"made on a machine with internet by `huggingface-cli download {hub_id} --local-dir DIR`"
        + (" after accepting the model's licence on the hub" if hub_id.startswith("facebook/dinov3") else ""))
