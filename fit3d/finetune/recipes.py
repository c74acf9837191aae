"""Named Stage 2 presets (``fit3d finetune --recipe NAME``); options given explicitly override a preset.

- ``fit3d``: FiT3D's recipe exactly: whole backbone, AdamW 1e-5, wd 1e-4, batch 2, clip 0.1, 1 epoch,
  no adapter, no anchor (= ``FinetuneConfig()``'s defaults).
- ``default``: the best recipe measured in ``docs/generalize.md`` (chosen on validation data):
  ``freeze`` + ``spread`` + ``residual``.
- ``lora``, ``freeze``, ``anchor``, ``spread``, ``residual``, ``ema``: the single levers of those searches, for
  reproducing them.

``FinetuneConfig()`` itself keeps FiT3D's values (the library default is the faithful method); the
``fit3d finetune`` command and ``bench/generalize.py`` start from ``default``.
"""

from __future__ import annotations

import dataclasses

from fit3d.errors import Fit3DError
from fit3d.finetune.config import FinetuneConfig

RECIPES: dict[str, dict] = {
    "fit3d": {},
    "lora": {"adapter": "lora", "lora_rank": 8, "lora_alpha": 16.0, "lora_targets": "attention", "lr": 1e-4},
    "freeze": {"freeze_blocks": -6},  # train the last 6 blocks (blocks 7-12 of a ViT-S/B)
    "anchor": {"anchor_weight": 0.5, "anchor_at": "everywhere"},
    "spread": {"anchor_weight": 0.5, "anchor_at": "spread"},  # anchor where the views disagree
    "residual": {"target_mode": "residual"},  # the lift's target inside its subspace, the original's tokens outside
    "ema": {"anchor_weight": 0.5, "anchor_at": "spread", "anchor_teacher": "ema"},  # spread anchor to an EMA teacher
}
# The best recipe measured (docs/generalize.md, numbers there): FiT3D's optimiser on the last 6 blocks
# only (7-12 of DINOv2-S; issue 14's search: same fit to the 3D targets as the whole backbone, the depth
# transfer closest to the original's, 0.57x the Stage 2 time), the anchor to the frozen original where
# the rendered target's views disagree (issue 14, full scale: CamVid -0.96 points instead of -2.5), and
# the residual target (issue 21's validation search, bench/recipe_search.py: the only lever with which
# the fine-tuned model gained on every validation eval; at 300 steps rooms seg +6.1 points where the
# rendered target lost 1.0 at 100, correspondence +0.034 instead of +0.010).
RECIPES["default"] = {**RECIPES["freeze"], **RECIPES["spread"], **RECIPES["residual"]}
DEFAULT_RECIPE = "default"


def recipe_overrides(name: str) -> dict:
    """The field values preset ``name`` sets (a copy)."""
    if name not in RECIPES:
        raise Fit3DError(f"unknown fine-tuning recipe {name!r}; choose from {', '.join(RECIPES)}")
    return dict(RECIPES[name])


def from_recipe(name: str | None, **explicit) -> FinetuneConfig:
    """``FinetuneConfig`` of preset ``name`` (None: FiT3D's defaults), with ``explicit`` fields on top."""
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    bad = sorted(set(explicit) - fields)
    if bad:
        raise Fit3DError(f"unknown FinetuneConfig field(s) {', '.join(bad)}")
    values = recipe_overrides(name) if name else {}
    values.update(explicit)
    values["recipe"] = name
    return FinetuneConfig(**values)
