"""How much per-token depth Stage 2's targets carry, against the original's tokens (issue 21's in-scene depth).

A lifted feature is one value per surface, whatever the camera's distance, so a 3D-consistent target may carry
less of what tells a linear head how far a token is than the original's own token does. This measures it on a
lifted scene's training views: a ridge regression from tokens to per-token log depth (the mean of the valid depth
pixels in each token's cell), fitted on every other sampled view and tested on the rest (``--split halves``: the first half of the capture, tested on the second), for

- ``original``: the frozen original's tokens x;
- ``rendered``: the rendered, decoded target t (``target_mode`` rendered, FiT3D);
- ``residual``: ``default``'s target, U U^T t + (I - U U^T) x (``fit3d.finetune.residual``);
- ``finetuned``: a fine-tuned model's tokens (``--finetuned DIR``, a Stage 2 output folder), optional;

with the trivial baselines (the fitted mean; for the aligned column, 0). ``metric``: RMSE of log depth;
``aligned``: the same after removing each view's mean log depth from prediction and ground truth (the scale a
head must get right per view against the layout inside the view). All in log-metres, lower is better.

    python bench/target_depth.py --scenes-dir S --cache-dir C [--every 2] [--finetuned RUN/finetuned]

``--sun3d RUN/finetuned ...`` instead: the same ridge on the unseen office's in-scene split (the test eval
``sun3d_depth_in_scene``'s frames, 935-984 -> 3160-3209), the original's tokens against each fine-tuned model's: the
feature side of that eval without its binned head (which the proof's numbers use).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.depth_head_pooling as P  # noqa: E402
import bench.generalize as G  # noqa: E402
from fit3d.finetune.data import RenderedViews, _scene_path, load_scenes  # noqa: E402
from fit3d.finetune.residual import decoder_subspace, subspace_target  # noqa: E402
from fit3d.models import load_backbone  # noqa: E402
from fit3d.paths import shared_7scenes_dir  # noqa: E402


def token_log_depth(depth: np.ndarray, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """depth [H, W] metres (0 invalid), H and W multiples of h and w -> (log of the mean valid depth per cell
    [h, w], cells at least half valid [h, w] bool)."""
    d = torch.as_tensor(np.asarray(depth, dtype=np.float32))[None]
    mean, share = P.pool_to_tokens(d, d > 0, d.shape[-1] // w)
    return mean[0].clamp_min(1e-3).log(), share[0] >= 0.5


def ridge_rmse(fit: list[tuple[torch.Tensor, torch.Tensor]], test: list[tuple[torch.Tensor, torch.Tensor]],
               lam: float = 1.0) -> tuple[float, float]:
    """Ridge from standardised features [n, D] to log depth [n] on ``fit`` views, tested on ``test`` views (each a
    list of per-view (features, log depth)) -> (metric RMSE, aligned RMSE: each test view's mean removed)."""
    X = torch.cat([x for x, _ in fit]).double()
    y = torch.cat([d for _, d in fit]).double()
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mu) / sd
    ym = y.mean()
    A = Z.T @ Z + lam * len(Z) / Z.shape[1] * torch.eye(Z.shape[1], dtype=Z.dtype)
    w = torch.linalg.solve(A, Z.T @ (y - ym))
    err, err_al = [], []
    for x, d in test:
        p = ((x.double() - mu) / sd) @ w + ym
        err.append(p - d.double())
        err_al.append((p - p.mean()) - (d.double() - d.double().mean()))
    return float(torch.cat(err).pow(2).mean().sqrt()), float(torch.cat(err_al).pow(2).mean().sqrt())


def baseline_rmse(fit, test) -> tuple[float, float]:
    """The trivial predictors: the fitting views' mean log depth (metric); 0 after the mean removal (aligned)."""
    ym = torch.cat([d for _, d in fit]).double().mean()
    d = torch.cat([d.double() for _, d in test])
    al = torch.cat([t.double() - t.double().mean() for _, t in test])
    return float((d - ym).pow(2).mean().sqrt()), float(al.pow(2).mean().sqrt())


@torch.no_grad()
def collect(views: RenderedViews, backbone, every: int, finetuned=None) -> dict[str, list]:
    """{kind: [(tokens [n, D], log depth [n]) per sampled view]} over the masked, depth-valid tokens."""
    from fit3d.data import read_scene

    out: dict[str, list] = {k: [] for k in ("original", "rendered", "residual", "finetuned")}
    U = {}
    for i in range(0, len(views), every):
        si, name = views.entries[i]
        s = views.scenes[si]
        if si not in U:
            U[si] = decoder_subspace(s.decoder)
        W, H = views.sizes[si]
        v = read_scene(_scene_path(s), layout=s.meta["scene"].get("layout", "auto"), resolution=(W, H),
                       names=[name], load_depth=True).views[0]
        if (v.width, v.height) != (W, H):
            v = v.resized(W, H)
        img = torch.from_numpy(v.image).permute(2, 0, 1)[None].float()
        x = backbone.features(img)[0][0]  # [D, h, w]
        tg = views.render_target(i, v.K, v.c2w)
        t = tg["target"]
        r = subspace_target(t[None], x[None], U[si][None], "residual")[0]
        ld, ok = token_log_depth(v.depth, *t.shape[1:])
        m = tg["mask"] & ok
        kinds = {"original": x, "rendered": t, "residual": r}
        if finetuned is not None:
            kinds["finetuned"] = finetuned.features(img)[0][0]
        for k, f in kinds.items():
            out[k].append((f[:, m].T.contiguous(), ld[m]))
    return {k: v for k, v in out.items() if v}


@torch.no_grad()
def sun3d_rows(models: list[Path], lams: list[float], size=(224, 168)) -> list[str]:
    """Markdown rows: the ridge's log-depth RMSE (metric / aligned) on the sun3d in-scene split (the benches' own,
    ``bench/generalize.py``'s ``SUN3D_IN_SCENE``), for the original and each fine-tuned folder, and each fine-tuned /
    original ratio."""
    from fit3d.finetune.assembled import load_finetuned

    parts = dict(zip(("fit", "test"), P.splits(sun3d=True, res=size)))

    def per_view(bb, split):
        x = P.features(bb, split.images)[0]  # [n, D, h, w]
        out = []
        for d, f in zip(split.depth, x):
            ld, ok = token_log_depth(d.numpy(), *f.shape[1:])
            out.append((f[:, ok].T.contiguous(), ld[ok]))
        return out

    rows, ref = [], None
    for path in [None, *models]:
        if path is None:
            bb = load_backbone("dinov2_small", model_path=G.GeneralizeConfig().model_path)
        else:
            _, bb = load_finetuned(path)
        fit, test = per_view(bb, parts["fit"]), per_view(bb, parts["test"])
        if path is None:
            rows.append("| trivial (mean / 0) | " + " | ".join(["{:.4f} / {:.4f}".format(*baseline_rmse(fit, test))]
                                                                * len(lams)) + " |")
        r = [ridge_rmse(fit, test, lam) for lam in lams]
        ref = ref or r
        name = "original" if path is None else str(path)
        cells = [f"{m:.4f} / {a:.4f}" + ("" if path is None else f" ({m / m0:.3f}x / {a / a0:.3f}x)")
                 for (m, a), (m0, a0) in zip(r, ref)]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes-dir", type=Path, help="bench/generalize.py's --scenes-dir (lifts)")
    ap.add_argument("--cache-dir", type=Path, help="its token cache")
    ap.add_argument("--every", type=int, default=2, help="every k-th training view of RedKitchen")
    ap.add_argument("--finetuned", type=Path, default=None, help="a Stage 2 output folder (its model's tokens too)")
    ap.add_argument("--lam", type=float, nargs="+", default=[0.1, 1.0, 10.0],
                    help="ridge strengths (per standardised feature and sample): one row each")
    ap.add_argument("--split", choices=("alternate", "halves"), default="alternate",
                    help="RedKitchen views fitted / tested: alternate ones, or the first half of the capture / the second "
                         "(frames ~0-199 -> ~200-398: another part of the kitchen, as val_redkitchen_depth)")
    ap.add_argument("--sun3d", type=Path, nargs="+", default=None, help="fine-tuned folders: the sun3d in-scene rows")
    a = ap.parse_args(argv)
    P.check_finetuned(ap, "--sun3d" if a.sun3d else "--finetuned", a.sun3d or ([a.finetuned] if a.finetuned else []))
    torch.set_grad_enabled(False)
    if a.sun3d:
        print("sun3d in-scene (935-984 -> 3160-3209): ridge RMSE of log depth, metric / aligned (ratio to the original)\n")
        print("| tokens | " + " | ".join(f"lam {x:g}" for x in a.lam) + " |\n|---" + "|---" * len(a.lam) + "|")
        print("\n".join(sun3d_rows(a.sun3d, a.lam)))
        return
    if a.scenes_dir is None or a.cache_dir is None:
        ap.error("--scenes-dir and --cache-dir are needed (all but --sun3d)")
    cfg = G.GeneralizeConfig(cache_dir=str(a.cache_dir), precision="fp32")
    bb = load_backbone("dinov2_small", model_path=cfg.model_path)
    ft = None
    if a.finetuned is not None:
        from fit3d.finetune.assembled import load_finetuned
        _, ft = load_finetuned(a.finetuned)
    d = G.lift_all(cfg, [("redkitchen", shared_7scenes_dir(), 398)], a.scenes_dir, bb)
    views = RenderedViews(load_scenes(d, embed_dim=bb.embed_dim, cache_dir=a.scenes_dir / "columns"),
                          bb.patch_size, resolution=list(cfg.probe_resolution), flip_prob=0.0)
    data = collect(views, bb, a.every, ft)
    first = next(iter(data.values()))
    half = len(first) // 2
    split = (lambda v: (v[0::2], v[1::2])) if a.split == "alternate" else (lambda v: (v[:half], v[half:]))
    fit, test = split(first)
    n = sum(len(y) for _, y in first)
    print(f"RedKitchen, {len(first)} views ({len(fit)} fit / {len(test)} test, {a.split}), {n} tokens; "
          f"RMSE of log depth, metric / aligned, per ridge strength\n")
    print("| tokens | " + " | ".join(f"lam {x:g}" for x in a.lam) + " |\n|---" + "|---" * len(a.lam) + "|")
    print("| trivial (mean / 0) | " + " | ".join(["{:.4f} / {:.4f}".format(*baseline_rmse(fit, test))] * len(a.lam))
          + " |")
    for k, v in data.items():
        print(f"| {k} | " + " | ".join("{:.4f} / {:.4f}".format(*ridge_rmse(*split(v), x)) for x in a.lam)
              + " |", flush=True)


if __name__ == "__main__":
    main()
