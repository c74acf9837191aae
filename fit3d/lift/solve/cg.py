"""The solve's least-squares feature problem: the weighted average (its start), preconditioned conjugate
gradient, and the ridge chosen on held-back training views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fit3d.lift.solve.weights import ViewWeights, torch_csr

RIDGE_CANDIDATES = (1e-1, 1e-2, 1e-3, 1e-4)  # ridge selection's grid (relative to each Gaussian's weight)


def weighted_average(num: Tensor, den: Tensor, min_weight: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(f [N, C] = num / den where den > min_weight, keep [N] bool). Never NaN: rows without weight are
    marked for dropping."""
    keep = den > min_weight
    f = torch.zeros_like(num)
    f[keep] = num[keep] / den[keep, None]
    return f, keep


def conjugate_gradient(matvec, b: Tensor, x0: Tensor, precond: Tensor, iterations: int,
                       ridge: Tensor | None = None, tol: float = 0.0) -> tuple[Tensor, list[float]]:
    """Preconditioned CG for (A + diag(ridge)) X = b, every column of b [N, C] at once (A is shared; each
    column has its own step sizes). precond [N] > 0: a diagonal approximation of A. Stops after
    ``iterations`` or once the mean relative residual |r| / |b| is below ``tol``. Returns (X, relative
    residual norms per iteration). Hand-written: a few lines, and the matvec is a pass over the views."""
    ridge = torch.zeros_like(precond) if ridge is None else ridge
    A = lambda x: matvec(x) + ridge[:, None] * x  # noqa: E731
    x = x0.clone()
    r = b - A(x)
    z = r / precond[:, None]
    p = z.clone()
    rz = (r * z).sum(0)
    bn = b.norm(dim=0).clamp_min(1e-30)
    hist = [float((r.norm(dim=0) / bn).mean())]
    inv = (1.0 / precond)[:, None]
    for _ in range(iterations):
        if hist[-1] < tol:
            break
        Ap = A(p)
        step = rz / (p * Ap).sum(0).clamp_min(1e-30)
        x.addcmul_(step.expand_as(p), p)  # in place: [N, C] float64 temporaries cost as much as the products
        r.sub_(Ap.mul_(step))
        hist.append(float((r.norm(dim=0) / bn).mean()))
        z = torch.mul(r, inv, out=z)
        rz_new = (r * z).sum(0)
        p.mul_(rz_new / rz.clamp_min(1e-30)).add_(z)
        rz = rz_new
    return x, hist


def select_ridge(vw: ViewWeights, targets: Tensor, candidates, iterations: int, tol: float, every: int = 8
                 ) -> tuple[float, dict, Tensor]:
    """The CG ridge (relative to each Gaussian's weight) that predicts held-back training views best: CG on all
    but every ``every``-th view (offset every // 2) for each candidate, largest first, each warm-started from
    the last; scored by the mean token cosine of the held-back views' pooled renders (in the decoder's
    basis) against their targets [V*R, C] (``stacked_targets``); ``iterations`` of CG at most per candidate.
    Hand-written: a validation split over our own CG, no library's model selection fits.
    Returns (ridge, {ridge: cosine}, that ridge's features [N, C]: a warm start for the solve). Few views
    pose an ill-posed problem that wants a strong ridge (the demo's 21-view rooms: 0.1), many views a weak one
    (RedKitchen's 175: 1e-4); one fixed value loses up to 0.05 cosine on one or the other."""
    V = vw.M.shape[0] // vw.rows
    held = [i for i in range(V) if i % every == every // 2]
    fit_idx = [i for i in range(V) if i % every != every // 2]
    fit, held_rows = vw.views(fit_idx), vw.view_rows(held)
    b = fit.rhs(targets[torch.from_numpy(vw.view_rows(fit_idx))])
    t_val = targets[torch.from_numpy(held_rows)]
    f, _ = weighted_average(b, fit.den)
    pre = fit.den.clamp_min(1e-6)
    Mv = torch_csr(vw.M[held_rows])  # the held-back views' rows only: no transpose, no weights of their own
    scores, sols = {}, {}
    for r in sorted(candidates, reverse=True):
        f, _ = conjugate_gradient(fit.matvec, b, f, pre, iterations, ridge=r * pre, tol=tol)
        pred = Mv @ f.float()
        seen = pred.norm(dim=1) > 0
        scores[r], sols[r] = float(F.cosine_similarity(pred[seen], t_val[seen].float(), dim=1).mean()), f
    best = max(scores, key=scores.get)
    return best, scores, sols[best]
