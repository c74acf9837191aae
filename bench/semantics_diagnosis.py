"""Why does Stage 2 cost semantics? Measures of the targets and of the features, before any fine-tuning.

    python bench/semantics_diagnosis.py --out runs/diagnosis [--scenes-dir DIR --cache-dir DIR]

1. **Where the Stage 2 loss comes from.** For each lifted scene (back-projected, f = 64, features of the lift
   resolution's image, as ``bench/generalize.py`` lifts by default) and its held-out views at 224 x 168: the
   original's tokens x, the rendered target t and the scene's lifted subspace U (the top-f left singular
   vectors of the decoder's weight [D, f k k]; for the back-projected lift the decoder's centre tap, the
   scene's f main directions). The gap x - t splits orthogonally into the part outside U (what the loss
   teaches the backbone to *drop*) and the part inside U (what it teaches it to *change*: the multi-view
   blend, the 3D signal). Also the energy (and the variance about the scene's mean token) of x outside U,
   and the relative gap |x - t|^2 / |x|^2 of the same scene lifted at full width (f = D: no bottleneck),
   with features of a 224 px image (the Stage 2 input; ``--lift-feature-size 224``), and both.
2. **Whether semantics live outside the subspace.** Linear seg heads (CamVid train -> val, generated
   validation rooms) on x, on U U^T x and on (I - U U^T) x, with U of RedKitchen and of a generated room: if
   the heads on (I - U U^T) x read much of the semantics, a backbone trained to emit U U^T x loses them.

Prints two tables (markdown) and writes ``OUT/diagnosis.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generalize as G  # noqa: E402  (bench/generalize.py: rooms, lifting, feature extraction)

from fit3d.io import write_json  # noqa: E402


def subspace(decoder, rank: int | None = None) -> torch.Tensor:
    from fit3d.finetune.residual import decoder_subspace

    return decoder_subspace(decoder, rank)


@torch.no_grad()
def target_gap(scene_dir: Path, backbone, res, others: dict | None = None) -> dict:
    """Energy and L1 shares of (x - t) inside / outside the scene's subspace over its held-out views; for each
    of ``others`` ({label: lifted folder of the same scene}) the relative gap |x - t|^2 / |x|^2 and its L1."""
    from fit3d.finetune.data import RenderedViews, load_scenes

    others = others or {}
    scenes = load_scenes([scene_dir] + list(others.values()), embed_dim=backbone.embed_dim)
    U = subspace(scenes[0].decoder).double()
    acc = {k: 0.0 for k in ("x2", "out_x2", "var", "out_var", "gap2", "gap_out2", "gap_in2", "l1", "l1_out",
                            "l1_in")}
    acc.update({f"{k}_gap2": 0.0 for k in others} | {f"{k}_l1": 0.0 for k in others})
    n = 0
    views = RenderedViews(scenes[:1], 14, which="heldout", resolution=list(res), flip_prob=0.0)
    other_views = {k: RenderedViews([sc], 14, which="heldout", resolution=list(res), flip_prob=0.0)
                   for k, sc in zip(others, scenes[1:])}
    xs = [backbone.features(views[i]["image"][None])[0][0].double() for i in range(len(views))]
    mean = torch.cat([x.flatten(1) for x in xs], 1).mean(1)  # the scene's mean token [D]
    for i in range(len(views)):
        it = views[i]
        x = xs[i]  # [D, h, w]
        m = it["mask"]
        X = x[:, m].T  # [M, D]
        T = it["target"].double()[:, m].T
        gap = X - T
        gin = gap @ U @ U.T
        gout = gap - gin
        xo = X - X @ U @ U.T
        Xc = X - mean
        acc["x2"] += float(X.square().sum())
        acc["out_x2"] += float(xo.square().sum())
        acc["var"] += float(Xc.square().sum())
        acc["out_var"] += float((Xc - Xc @ U @ U.T).square().sum())
        acc["gap2"] += float(gap.square().sum())
        acc["gap_out2"] += float(gout.square().sum())
        acc["gap_in2"] += float(gin.square().sum())
        acc["l1"] += float(gap.abs().mean(1).sum())
        acc["l1_out"] += float(gout.abs().mean(1).sum())
        acc["l1_in"] += float(gin.abs().mean(1).sum())
        for k, ov in other_views.items():
            Tk = ov[i]["target"].double()[:, m].T
            acc[f"{k}_gap2"] += float((X - Tk).square().sum())
            acc[f"{k}_l1"] += float((X - Tk).abs().mean(1).sum())
        n += len(X)
    return {"tokens": n, "views": len(views), "rank": int(U.shape[1]),
            "x_energy_outside": acc["out_x2"] / acc["x2"],
            "x_variance_outside": acc["out_var"] / acc["var"],
            "gap_over_x": acc["gap2"] / acc["x2"],
            "gap_share_outside": acc["gap_out2"] / acc["gap2"],
            "gap_share_inside": acc["gap_in2"] / acc["gap2"],
            "l1": acc["l1"] / n, "l1_outside": acc["l1_out"] / n, "l1_inside": acc["l1_in"] / n,
            "others": {k: {"gap_over_x": acc[f"{k}_gap2"] / acc["x2"], "l1": acc[f"{k}_l1"] / n} for k in others}}


def seg_by_part(feats_tr, lab_tr, feats_te, lab_te, num_classes, bases: dict, iterations: int, seeds: int) -> dict:
    """{part: mIoU mean over seeds} of heads on x, U U^T x and (I - U U^T) x for each U in ``bases``."""
    from fit3d.probe.batched import train_seg_batched
    from fit3d.probe.seg import SegSettings, confusion_matrix, predict_seg, seg_metrics

    def proj(P, U, inside):
        p = torch.einsum("ndhw,dr->nrhw", P, U)
        inner = torch.einsum("nrhw,dr->ndhw", p, U)
        return inner if inside else P - inner

    parts = {"x": (feats_tr, feats_te)}
    for name, U in bases.items():
        U = U.float()
        parts[f"in {name}"] = (proj(feats_tr, U, True), proj(feats_te, U, True))
        parts[f"out {name}"] = (proj(feats_tr, U, False), proj(feats_te, U, False))
    labels = list(parts)
    settings = [SegSettings(iterations=iterations, seed=s) for s in range(seeds)]
    heads = train_seg_batched([parts[k][0] for k in labels], lab_tr, num_classes, settings)
    out = {}
    size = tuple(lab_te.shape[-2:])
    for k, name in enumerate(labels):
        vals = []
        for si in range(seeds):
            head = heads[si * len(labels) + k][0]
            pred = predict_seg(head, parts[name][1], size)
            vals.append(seg_metrics(confusion_matrix(pred, lab_te, num_classes))["miou"])
        out[name] = float(np.mean(vals))
    energy = {name: float(proj(feats_te, U.float(), False).square().sum() / feats_te.square().sum())
              for name, U in bases.items()}
    return {"miou": out, "energy_outside": energy}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/diagnosis")
    ap.add_argument("--scenes-dir", default=None, help="lifted scenes / rooms (share with bench/generalize.py)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--model-path", default=str(G.shared_model_dir()))
    ap.add_argument("--rooms", type=int, default=2, help="generated rooms lifted (seeds 0..)")
    ap.add_argument("--room-views", type=int, default=16)
    ap.add_argument("--lift-max-views", type=int, default=48)
    ap.add_argument("--max-items", type=int, default=48, help="CamVid / val-room images per probe split")
    ap.add_argument("--iterations", type=int, default=300, help="seg head iterations")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", nargs="+", default=["gap", "semantics"], choices=["gap", "semantics"],
                    help="which measurements (gap: 1., semantics: 2.); each part's table is kept in OUT")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from fit3d.data.synthetic import CLASS_NAMES, SyntheticSceneConfig, generate_scenes
    from fit3d.models import load_backbone
    from fit3d.probe.datasets import load_probe_data
    from fit3d.probe.features import FeatureCache
    from fit3d.probe.protocol import materialise
    from fit3d.probe.sources import FeatureSource

    out = Path(a.out)
    work = Path(a.scenes_dir) if a.scenes_dir else out
    res = (224, 168)
    t_all = time.perf_counter()
    gcfg = G.GeneralizeConfig(out=str(out), model_path=a.model_path, rooms=a.rooms, probe_rooms=0, test_rooms=0,
                              room_views=a.room_views, lift_max_views=a.lift_max_views,
                              cache_dir=a.cache_dir)  # its lifts' tokens in the probes' cache
    rooms = G.generate_rooms(gcfg, work)
    backbone = load_backbone("dinov2_small", model_path=a.model_path)
    scenes = [("redkitchen", Path(gcfg.redkitchen), 398), ("icl-livingroom1", Path(gcfg.icl), None)]
    scenes += [(p.name, p, None) for p in rooms.get("lift", [])]
    lifted = G.lift_all(gcfg, scenes, work, backbone)
    variants = {"f=D": dict(lift_feature_dim=0), "224 px": dict(lift_feature_size=224),
                "224 px, f=D": dict(lift_feature_size=224, lift_feature_dim=0)}
    other = {k: G.lift_all(dataclasses.replace(gcfg, **v), scenes, work, backbone) for k, v in variants.items()}

    prev = json.loads((out / "diagnosis.json").read_text()) if (out / "diagnosis.json").exists() else {}
    gaps = prev.get("target_gap", {})
    if "gap" in a.parts:
        for i, d in enumerate(lifted):
            print(f"[diagnosis] target gap: {d.name}", flush=True)
            gaps[d.name] = target_gap(d, backbone, res, {k: v[i] for k, v in other.items()})
        write_json(out / "diagnosis.json", {**prev, "target_gap": gaps})

    from fit3d.lift.lifted import load_lifted

    bases = {"redkitchen": subspace(load_lifted(lifted[0]).decoder), "room": subspace(load_lifted(lifted[-1]).decoder)}
    cache = FeatureCache(a.cache_dir or out / "cache")
    src = {"original": FeatureSource("original", "dinov2_small", a.model_path)}
    val_rooms = generate_scenes(work / "rooms" / "diag-val", 2,
                                SyntheticSceneConfig(num_views=a.room_views, width=224, height=168, seed=30000),
                                progress=False)
    sets = {"camvid": (load_probe_data(gcfg.camvid, "train", res, dataset="camvid", max_items=a.max_items),
                       load_probe_data(gcfg.camvid, "test", res, dataset="camvid", max_items=a.max_items)),
            "val_rooms": (load_probe_data(val_rooms[0], "train", res, dataset="scene", train_frames=(0, 10 ** 9),
                                          num_classes=len(CLASS_NAMES)),
                          load_probe_data(val_rooms[1], "train", res, dataset="scene", train_frames=(0, 10 ** 9),
                                          num_classes=len(CLASS_NAMES)))}
    semantics = prev.get("semantics", {})
    for name, (tr, te) in sets.items() if "semantics" in a.parts else ():
        print(f"[diagnosis] seg heads by part: {name}", flush=True)
        str_, ste = materialise(tr, "seg"), materialise(te, "seg")
        f = G.extract(src | {"finetuned": src["original"]}, {f"{name}_tr": str_, f"{name}_te": ste}, cache, res)
        semantics[name] = seg_by_part(f[f"{name}_tr"]["original"].patch, str_.labels, f[f"{name}_te"]["original"].patch,
                                      ste.labels, tr.num_classes, bases, a.iterations, a.seeds)
    result = {**prev, "target_gap": gaps, "semantics": semantics, "seconds": time.perf_counter() - t_all,
              "settings": vars(a)}
    write_json(out / "diagnosis.json", result)

    labels = list(next(iter(gaps.values()))["others"]) if gaps else []
    lines = ["| scene | x energy (variance) outside U | \\|x - t\\|^2 / \\|x\\|^2 | share outside U / inside U | "
             "L1 (outside / inside) | " + " | ".join(f"{k}: \\|x - t\\|^2 / \\|x\\|^2, L1" for k in labels) + " |",
             "|---|---|---|---|---|" + "---|" * len(labels)]
    for name, g in gaps.items():
        lines.append(f"| {name} | {g['x_energy_outside']:.3f} ({g['x_variance_outside']:.3f}) | {g['gap_over_x']:.3f} | "
                     f"{g['gap_share_outside']:.3f} / {g['gap_share_inside']:.3f} | {g['l1']:.3f} ({g['l1_outside']:.3f} / "
                     f"{g['l1_inside']:.3f}) | " + " | ".join(f"{g['others'][k]['gap_over_x']:.3f}, {g['others'][k]['l1']:.3f}"
                                                          for k in labels) + " |")
    parts = list(next(iter(semantics.values()))["miou"]) if semantics else []
    lines += ["", "| seg set | " + " | ".join(f"mIoU {p}" for p in parts) + " | energy outside U (redkitchen / room) |",
              "|---|" + "---|" * (len(parts) + 1)]
    for name, s in semantics.items():
        e = s["energy_outside"]
        lines.append(f"| {name} | " + " | ".join(f"{s['miou'][p]:.4f}" for p in parts)
                     + f" | {e['redkitchen']:.3f} / {e['room']:.3f} |")
    table = "\n".join(lines)
    (out / "diagnosis.md").write_text(table + "\n")
    print(table)
    print(f"seconds {result['seconds']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
