"""``fit3d backbones``: list the registered 2D backbones and whether their model class is available here."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the registry as JSON instead of a table")


def rows() -> list[dict]:
    """One dict per registered backbone: name, family, hub id, patch, width, registers, availability."""
    from fit3d.models.families import FAMILIES
    from fit3d.models.registry import BACKBONES

    status = {name: fam.available() for name, fam in FAMILIES.items()}
    out = []
    for spec in BACKBONES.values():
        ok, why = status.get(spec.family, (False, f"unknown family {spec.family}"))
        out.append(dict(name=spec.name, family=spec.family, hub_id=spec.hub_id, patch=spec.patch_size,
                        width=spec.embed_dim, registers=spec.num_registers, available=ok, loader=why,
                        description=spec.description))
    return out


def run(args: argparse.Namespace) -> int:
    table = rows()
    if getattr(args, "json", False):
        print(json.dumps(table, indent=2))
        return 0
    cols = [("name", "name"), ("family", "family"), ("hub id", "hub_id"), ("patch", "patch"), ("width", "width"),
            ("regs", "registers"), ("available", "available")]
    cells = [[h for h, _ in cols]] + [[("yes" if r[k] else "no") if k == "available" else str(r[k])
                                       for _, k in cols] for r in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    missing = {r["family"]: r["loader"] for r in table if not r["available"]}
    for fam, why in missing.items():
        print(f"\n{fam}: unavailable: {why}")
    print("\nLoad with --model-path DIR or FIT3D_MODEL_PATH=DIR (a folder in the hub layout) when offline.")
    return 0
