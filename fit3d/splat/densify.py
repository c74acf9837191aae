"""3DGS adaptive density control for Stage 1: clone / split / prune / opacity reset.

FiT3D uses 3DGS's schedule over 30,000 iterations: densify every 100 iterations from 500 to 15,000
(view-space gradient threshold 2e-4), reset opacity every 3,000, prune opacity < 0.005 or screen size
> 20 px (at 876 px width) or world size > 0.1 x scene extent. :class:`DensifySchedule` scales those
iteration numbers to the configured run length.

Parameters live in a dict ``name -> nn.Parameter`` (names :data:`PARAM_NAMES`, first dim N) with one
Adam param group per tensor (``group["name"]``); the helpers keep Adam's moments aligned when rows
are added or removed, as 3DGS does.

The rasterizer takes 3D means, so the view-space gradient is recovered from the gradient of the
world-space means: rotated into the camera frame, dL/du ~= dL/dx_cam * z / fx (and likewise for v),
then expressed in NDC units (x W/2, x H/2) like 3DGS's ``means2D`` gradient. That drops the small
terms through the projected covariance, which is accurate enough for a threshold test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

PARAM_NAMES = ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest", "features")
REFERENCE_ITERATIONS = 30_000  # FiT3D / 3DGS run length the reference schedule is written for


@dataclass
class DensifySchedule:
    """Iteration numbers (1-based, counted after the optimizer step) of density control."""

    start: int
    stop: int
    interval: int
    opacity_reset_interval: int

    @classmethod
    def scaled(cls, iterations: int, *, start_frac: float = 500 / REFERENCE_ITERATIONS,
               stop_frac: float = 15_000 / REFERENCE_ITERATIONS, interval_frac: float = 100 / REFERENCE_ITERATIONS,
               reset_frac: float = 3_000 / REFERENCE_ITERATIONS, min_interval: int = 10) -> "DensifySchedule":
        """3DGS's schedule shrunk to ``iterations``. The interval never falls below ``min_interval`` so the
        gradient statistics average over several views before each decision."""
        interval = max(min_interval, round(interval_frac * iterations))
        return cls(start=max(interval, round(start_frac * iterations)), stop=round(stop_frac * iterations),
                   interval=interval, opacity_reset_interval=max(2 * interval, round(reset_frac * iterations)))

    def densify_now(self, it: int) -> bool:
        return self.start <= it <= self.stop and it % self.interval == 0

    def reset_now(self, it: int) -> bool:
        return it <= self.stop and it % self.opacity_reset_interval == 0


class DensifyStats:
    """Running view-space gradient norms and max screen radii since the last densification."""

    def __init__(self, n: int, device=None):
        self.grad_accum = torch.zeros(n, device=device)  # [N]
        self.denom = torch.zeros(n, device=device)  # [N]
        self.max_radii = torch.zeros(n, device=device)  # [N] pixels

    def reset(self, n: int | None = None) -> None:
        n = self.grad_accum.shape[0] if n is None else n
        self.__init__(n, self.grad_accum.device)

    def state_dict(self) -> dict:
        return {"grad_accum": self.grad_accum, "denom": self.denom, "max_radii": self.max_radii}

    def load_state_dict(self, d: dict) -> None:
        self.grad_accum, self.denom, self.max_radii = d["grad_accum"], d["denom"], d["max_radii"]

    @torch.no_grad()
    def update(self, means: Tensor, means_grad: Tensor | None, max_scale: Tensor, viewmat: Tensor, K: Tensor,
               width: int, height: int, near: float = 0.01) -> None:
        """Accumulate one view. means, means_grad [N, 3] world; max_scale [N]; viewmat [4, 4] w2c; K [3, 3]."""
        R, t = viewmat[:3, :3], viewmat[:3, 3]
        pc = means @ R.T + t  # [N, 3]
        z = pc[:, 2].clamp_min(near)
        u = K[0, 0] * pc[:, 0] / z + K[0, 2]
        v = K[1, 1] * pc[:, 1] / z + K[1, 2]
        radii = 3.0 * max_scale * K[0, 0] / z  # [N] approximate 3-sigma screen radius (px)
        visible = (pc[:, 2] > near) & (u + radii > 0) & (u - radii < width) & (v + radii > 0) & (v - radii < height)
        self.max_radii = torch.where(visible, torch.maximum(self.max_radii, radii), self.max_radii)
        if means_grad is None:
            return
        gc = means_grad @ R.T  # [N, 3] dL/d(camera-space mean)
        gu = gc[:, 0] * z / K[0, 0] * (0.5 * width)  # dL/d(ndc u)
        gv = gc[:, 1] * z / K[1, 1] * (0.5 * height)
        g = torch.sqrt(gu * gu + gv * gv)
        self.grad_accum += torch.where(visible, g, torch.zeros_like(g))
        self.denom += visible.float()


# ------------------------------------------------------------------ optimizer-aware tensor surgery
def param_group(optimizer: torch.optim.Optimizer, name: str) -> dict:
    """The optimizer's param group named ``name`` (groups carry a "name" key)."""
    for g in optimizer.param_groups:
        if g.get("name") == name:
            return g
    raise KeyError(name)


def _swap(optimizer, params: dict, name: str, new_value: Tensor, state_fn) -> None:
    group = param_group(optimizer, name)
    old = group["params"][0]
    state = optimizer.state.pop(old, None)
    new = nn.Parameter(new_value.contiguous().requires_grad_(True))
    if state:
        for k in ("exp_avg", "exp_avg_sq"):
            if k in state:
                state[k] = state_fn(state[k]).contiguous()
        optimizer.state[new] = state
    group["params"][0] = new
    params[name] = new


@torch.no_grad()
def keep_rows(params: dict, optimizer, keep: Tensor) -> None:
    """Keep only rows ``keep`` [N] bool of every parameter and its Adam moments."""
    for name in PARAM_NAMES:
        _swap(optimizer, params, name, params[name].detach()[keep], lambda s: s[keep])


@torch.no_grad()
def append_rows(params: dict, optimizer, new: dict[str, Tensor]) -> None:
    """Append rows ``new[name]`` [M, ...] to each parameter; their Adam moments start at zero."""
    for name in PARAM_NAMES:
        ext = new[name]
        _swap(optimizer, params, name, torch.cat([params[name].detach(), ext]),
              lambda s, ext=ext: torch.cat([s, torch.zeros_like(ext)]))


@torch.no_grad()
def reset_opacity(params: dict, optimizer, value: float = 0.01) -> None:
    """Clamp opacities to at most ``value`` and zero their Adam moments (3DGS's opacity reset)."""
    cap = math.log(value / (1 - value))
    _swap(optimizer, params, "opacity_logits", params["opacity_logits"].detach().clamp(max=cap), torch.zeros_like)


def quat_to_rotmat(q: Tensor) -> Tensor:
    """[N, 4] (w, x, y, z), unnormalised -> [N, 3, 3]."""
    q = torch.nn.functional.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


@torch.no_grad()
def densify_and_prune(params: dict, optimizer, stats: DensifyStats, *, grad_threshold: float, extent: float,
                      percent_dense: float = 0.01, min_opacity: float = 0.005, max_screen_size: float | None = None,
                      max_world_size: float = 0.1, max_gaussians: int | None = None,
                      generator: torch.Generator | None = None) -> dict:
    """One 3DGS density-control step: clone small / split large Gaussians whose mean view-space gradient
    is >= ``grad_threshold``, then prune transparent (and, when ``max_screen_size`` is given, huge) ones.

    ``max_gaussians`` caps growth: only the highest-gradient candidates are kept when over budget.
    Returns counts ``{"cloned", "split", "pruned", "total"}``.
    """
    n = params["means"].shape[0]
    grads = stats.grad_accum / stats.denom.clamp_min(1)
    grads[stats.denom == 0] = 0
    scales = params["log_scales"].detach().exp()  # [N, 3]
    big = scales.max(dim=1).values > percent_dense * extent
    cand = grads >= grad_threshold
    if max_gaussians is not None:
        # Splitting adds one net row, cloning one; keep the strongest gradients within the budget.
        room = max(0, max_gaussians - n)
        if int(cand.sum()) > room:
            idx = torch.nonzero(cand).squeeze(1)
            top = idx[torch.argsort(grads[idx], descending=True)[:room]]
            cand = torch.zeros_like(cand)
            cand[top] = True
    clone, split = cand & ~big, cand & big

    p = {k: params[k].detach() for k in PARAM_NAMES}
    new_clone = {k: p[k][clone] for k in PARAM_NAMES}
    # Split: two samples from each large Gaussian, scales / (0.8 * 2), originals removed below.
    sidx = torch.nonzero(split).squeeze(1).repeat(2)
    std = scales[sidx]
    # drawn on the CPU (the generator's device) and moved: the same split on every device
    noise = torch.randn(std.shape, generator=generator).to(std.device) * std
    rot = quat_to_rotmat(p["quats"][sidx])
    new_split = {k: p[k][sidx] for k in PARAM_NAMES}
    new_split["means"] = p["means"][sidx] + torch.bmm(rot, noise[:, :, None]).squeeze(-1)
    new_split["log_scales"] = torch.log(std / (0.8 * 2))
    append_rows(params, optimizer, {k: torch.cat([new_clone[k], new_split[k]]) for k in PARAM_NAMES})

    m = params["means"].shape[0] - n
    remove = torch.cat([split, torch.zeros(m, dtype=torch.bool, device=split.device)])
    opac = torch.sigmoid(params["opacity_logits"].detach())
    remove |= opac < min_opacity
    if max_screen_size is not None:
        radii = torch.cat([stats.max_radii, torch.zeros(m, device=stats.max_radii.device)])
        world = params["log_scales"].detach().exp().max(dim=1).values
        remove |= (radii > max_screen_size) | (world > max_world_size * extent)
    if bool(remove.all()):  # never prune everything (degenerate early runs): keep the most opaque
        remove[torch.argmax(opac)] = False
    keep_rows(params, optimizer, ~remove)
    stats.reset(params["means"].shape[0])
    return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int(remove.sum()),
            "total": int(params["means"].shape[0])}
