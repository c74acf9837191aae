"""A uniform model soup (Wortsman et al., 2022) of finished Stage 2 folders: the weights of N fine-tuned models of one
recipe that differ only in their Stage 2 seed, averaged into a new folder. A lever against Stage 2's seed-to-seed
variance (docs/generalize.md, sitting 17), evaluated like any fine-tuned model:

    python bench/soup.py --out DIR SRC1 SRC2 ... [--manifest-from SRC1]
    python bench/generalize.py ... --from-finetuned DIR --set seed=S      # S: the seed of --manifest-from
    python bench/recipe_search.py ... --from-finetuned DIR --set seed=S

Every source must have the same settings but the seed (checked); the [CLS] branch (``cls_branch.safetensors``)
must hold the same tensors in all (the original's own blocks: `default`'s) and is copied. The new ``fit3d.json`` is
``--manifest-from``'s with the soup's fingerprint and ``soup_of`` (the sources); its settings keep that source's
seed, so the benches' resume check reads it as that seed's run (the record says what it really is). The sources are
never changed. Hand-written: a mean of state dicts, no library call to wrap.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fit3d.errors import Fit3DError  # noqa: E402
from fit3d.finetune.assembled import read_manifest  # noqa: E402
from fit3d.finetune.trainer import MANIFEST_FILE, MODEL_DIR  # noqa: E402
from fit3d.guard import check_not_input  # noqa: E402
from fit3d.io import write_json  # noqa: E402
from fit3d.models.cls_branch import CLS_BRANCH_FILE  # noqa: E402
from fit3d.models.identity import folder_fingerprint  # noqa: E402

WEIGHTS = "model.safetensors"


def settings_but_seed(folder: Path) -> dict:
    s = dict(read_manifest(folder).get("settings") or {})
    s.pop("seed", None)
    return s


def soup(sources: list[Path], out: Path, manifest_from: Path) -> dict:
    """Average ``sources``' weights into ``out`` (model/ + fit3d.json); returns the new manifest."""
    check_not_input(out, sources)
    ref = settings_but_seed(sources[0])
    for s in sources[1:]:
        if settings_but_seed(s) != ref:
            raise SystemExit(f"{s}: its settings differ from {sources[0]}'s beyond the seed: not a soup of one recipe")
    states = [load_file(str(s / MODEL_DIR / WEIGHTS)) for s in sources]
    keys = states[0].keys()
    if any(st.keys() != keys for st in states):
        raise SystemExit("the sources' weights have different tensors")
    mean = {k: (sum(st[k].double() for st in states) / len(states)).to(states[0][k].dtype).contiguous() for k in keys}
    tmp = out / (MODEL_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(mean, str(tmp / WEIGHTS), metadata={"format": "pt"})
    shutil.copyfile(sources[0] / MODEL_DIR / "config.json", tmp / "config.json")
    branches = [s / MODEL_DIR / CLS_BRANCH_FILE for s in sources]
    if any(b.exists() for b in branches):
        first = load_file(str(branches[0]))
        same = lambda b: b.exists() and all(torch.equal(t, first[k]) for k, t in load_file(str(b)).items())  # noqa: E731
        if not all(same(b) for b in branches):
            raise SystemExit("the sources' [CLS] branches differ: a soup keeps only a shared one")
        shutil.copyfile(branches[0], tmp / CLS_BRANCH_FILE)
    if (out / MODEL_DIR).exists():
        shutil.rmtree(out / MODEL_DIR)
    tmp.rename(out / MODEL_DIR)
    m = read_manifest(manifest_from)
    m.update(model_dir=MODEL_DIR, finetuned_fingerprint=folder_fingerprint(out / MODEL_DIR),
             soup_of=[str(s.resolve()) for s in sources],
             metrics={k: v for k, v in (m.get("metrics") or {}).items() if k != "heldout"})  # measured on one source
    write_json(out / MANIFEST_FILE, m)
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+", help="finished Stage 2 folders (fit3d.json + model/)")
    ap.add_argument("--out", required=True, help="the soup's folder (new)")
    ap.add_argument("--manifest-from", default=None, help="the source whose record (and seed) the soup takes "
                                                          "(default: the first)")
    args = ap.parse_args(argv)
    sources = [Path(s) for s in args.sources]
    try:
        m = soup(sources, Path(args.out), Path(args.manifest_from) if args.manifest_from else sources[0])
    except Fit3DError as e:  # a source that is not a finished Stage 2 folder, an output inside a source
        raise SystemExit(f"bench/soup.py: {e}") from None
    print(f"{args.out}: mean of {len(sources)} models, fingerprint {m['finetuned_fingerprint']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
