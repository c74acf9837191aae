"""Batched probe heads: the heads of every (feature source, seed) of a run trained in one pass.

The separate trainers (``depth.train_depth``, ``seg.train_seg``) train one head at a time; a run with
3 sources x 3 seeds repeats the same loop 9 times. Here all heads step together:

- one stacked weight per width class of the sources ([n, K, C] patch, [n, K, Dc] [CLS], [n, K] bias;
  sources of equal width share a class, so original and fine-tuned never pay for concat's width),
  applied as one ``einsum`` per class;
- one AdamW over the stacked tensors: AdamW (and its decoupled weight decay) is elementwise and the
  trainers clip no gradient, so the stacked update equals the separate ones; the total loss is the sum
  of the heads' losses, which share no parameter, so each head's gradient is its own;
- each seed's batch indices come from ``train.batch_order`` as in the separate trainer and each head
  starts from the weights ``torch.manual_seed(seed)`` gives the separate trainer's head, so a head here
  and the same (source, seed) trained alone follow the same path up to float rounding
  (``tests/probe/test_batched.py``);
- the ground truth of a seed's batch (depth, valid mask, labels) is gathered once for all sources;
- a seg head's cross entropy and a depth head's loss are taken on every ``label_stride``-th label pixel
  (``fit3d.probe.seg``, ``fit3d.probe.depth``): the final resize matrices keep only those rows and columns,
  so only those logits / depths are ever computed;
- the x4 and final bilinear resizes are matmuls with the interpolation matrices (built by
  ``F.interpolate`` itself, so the weights are PyTorch's), whose backward is a matmul too (CPU
  ``upsample_bilinear2d_backward`` was a tenth of a separate step), and the depth head's bin
  normalisation + expectation is one contraction of relu(logits) with [bins, 1] instead of
  per-element divide / multiply / sum passes over the [B, 256, 4h, 4w] probabilities (half of a
  separate step in the profile);
- validation is one batched forward of the validation split for all heads.

Heads come back as the ordinary ``LinearDepthHead`` / ``LinearSegHead`` modules, so prediction, saving
and metrics are the same code as for separate training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fit3d.errors import NonFiniteError
from fit3d.resize import interp_matrix, resize  # noqa: F401 - resize is also this module's API
from fit3d.probe.depth_bins import bin_sums
from fit3d.probe.depth import DepthSettings, LinearDepthHead, log_gradient_loss, valid_mask
from fit3d.probe.seg import LinearSegHead, SegSettings
from fit3d.probe.train import batch_order, label_phase, lr_factor


@dataclass
class _Classes:
    """Heads grouped by input width: ``members[c]`` = global head indices of width class c."""

    widths: list[tuple[int, int]]
    members: list[list[int]]

    @classmethod
    def of(cls, widths: list[tuple[int, int]]) -> "_Classes":
        ws, members = [], []
        for g, w in enumerate(widths):
            if w not in ws:
                ws.append(w)
                members.append([])
            members[ws.index(w)].append(g)
        return cls(ws, members)

    def order(self) -> torch.Tensor:
        """Permutation taking the class-concatenated head order back to the global order."""
        flat = [g for m in self.members for g in m]
        return torch.tensor(sorted(range(len(flat)), key=flat.__getitem__))


def _depth_losses(pred, gt, valid, dims, grad_weight: float, lam: float = 0.15, eps: float = 1e-3,
                  grid: int = 1) -> torch.Tensor:
    """``depth.sig_loss + grad_weight * depth.gradient_loss`` per head, with masked sums instead of
    boolean indexing (same value) and the log difference computed once for both terms."""
    m = valid.to(pred.dtype)
    g = (torch.log(pred + eps) - torch.log(gt + eps)) * m
    n = m.expand_as(g).sum(dims)
    mean = g.sum(dims) / n.clamp(min=1)
    shape = mean.shape + (1,) * len(dims)
    var = (((g - mean.reshape(shape)) * m) ** 2).sum(dims) / (n - 1).clamp(min=1)  # unbiased as torch.var
    sig = torch.where(n >= 2, torch.sqrt(var + lam * mean ** 2), pred.sum(dims) * 0.0)
    return sig + grad_weight * log_gradient_loss(g, m, dims=dims, grid=grid)


def _gather(feats: list[torch.Tensor], members: list[int], src_of, idx_of) -> torch.Tensor:
    """[n, B, ...]: the features of each member head's source at its seed's batch indices."""
    return torch.stack([feats[src_of(g)][idx_of(g)] for g in members])


class _Loop:
    """The shared loop: AdamW + schedule over stacked params, per-seed batches, best-checkpoint bookkeeping."""

    def __init__(self, params: list[torch.Tensor], n_heads: int, *, iterations, lr, weight_decay, schedule,
                 warmup):
        self.params, self.n_heads, self.iterations = params, n_heads, iterations
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda it: lr_factor(it, iterations, warmup, schedule))

    def run(self, n_train: int, batch_size: int, seeds: list[int], step_losses, desc: str, validate=None,
            val_every: int = 100, snapshot=None) -> dict:
        orders = [batch_order(n_train, batch_size, self.iterations, s) for s in seeds]
        losses, vals = [], []
        best: list = [None] * self.n_heads  # per head (iteration, score, state)
        t0 = time.perf_counter()
        for it in tqdm(range(self.iterations), desc=desc, leave=False):
            per = step_losses([next(o) for o in orders])  # [G]
            if not torch.isfinite(per).all():
                bad = int((~torch.isfinite(per)).nonzero()[0])
                raise NonFiniteError(f"{desc}: head {bad}'s loss became {per[bad].item()} at iteration {it}")
            self.opt.zero_grad(set_to_none=True)
            per.sum().backward()
            self.opt.step()
            self.sched.step()
            losses.append(per.detach())
            if validate is not None and ((it + 1) % max(1, val_every) == 0 or it + 1 == self.iterations):
                with torch.no_grad():
                    scores = validate().tolist()
                vals.append((it + 1, scores))
                state = None
                for g, sc in enumerate(scores):
                    if best[g] is None or sc < best[g][1]:
                        state = state or snapshot()
                        best[g] = (it + 1, sc, [s[g] for s in state])
        per_head = torch.stack(losses).T.tolist() if losses else [[] for _ in range(self.n_heads)]
        return {"losses": per_head, "seconds": time.perf_counter() - t0, "val": vals, "best": best}


def _logs(out: dict, validate: bool) -> list[dict]:
    logs = []
    for g in range(len(out["losses"])):
        log = {"losses": out["losses"][g], "seconds": out["seconds"], "batched_heads": len(out["losses"])}
        if validate and out["best"][g] is not None:
            log.update(val=[(it, sc[g]) for it, sc in out["val"]], best_iteration=out["best"][g][0],
                       best_val=out["best"][g][1])
        logs.append(log)
    return logs


# ------------------------------------------------------------------------------------------------- depth


class _StackedDepth:
    """All depth heads as stacked tensors; ``forward`` gives depth [G, B, H, W] for per-head inputs."""

    fused: bool | None = None  # the numba tail (depth_bins); None: on CPU, tensor ops on other devices

    def __init__(self, heads: list[LinearDepthHead], classes: _Classes):
        self.classes, self.use_cls = classes, heads[0].use_cls
        self.upsample, self.bins = heads[0].upsample, heads[0].bins
        self.Wp, self.Wc, self.b = [], [], []
        for (C, Dc), members in zip(classes.widths, classes.members):
            w = torch.stack([heads[g].conv.weight.detach()[:, :, 0, 0] for g in members])  # [n, K, C + Dc]
            self.Wp.append(w[:, :, :C].clone().requires_grad_())
            self.Wc.append(w[:, :, C:].clone().requires_grad_() if self.use_cls else None)
            self.b.append(torch.stack([heads[g].conv.bias.detach() for g in members]).clone().requires_grad_())
        self.order = classes.order()
        self._mats: dict = {}

    def params(self) -> list[torch.Tensor]:
        return [t for t in (*self.Wp, *self.Wc, *self.b) if t is not None]

    def state(self) -> list[list[torch.Tensor]]:
        """Per global head: [patch weight, cls weight | None, bias] (detached clones)."""
        out = [None] * len(self.order)
        for c, members in enumerate(self.classes.members):
            for i, g in enumerate(members):
                out[g] = [self.Wp[c][i].detach().clone(), None if self.Wc[c] is None else self.Wc[c][i].detach().clone(),
                          self.b[c][i].detach().clone()]
        return [[out[g][k] for g in range(len(out))] for k in range(3)]

    def mats(self, h: int, w: int, out_size: tuple[int, int], ref: torch.Tensor):
        key = (h, w, out_size, ref.dtype, ref.device)
        if key not in self._mats:
            u, (H, W) = self.upsample, out_size
            mk = lambda a, b: interp_matrix(a, b, ref.dtype, ref.device)  # noqa: E731
            self._mats[key] = (mk(h, u * h), mk(w, u * w).T.contiguous(), mk(u * h, H), mk(u * w, W).T.contiguous())
        return self._mats[key]

    def forward(self, patches: list[torch.Tensor], clss: list[torch.Tensor | None], out_size, stride: int = 1,
                phase: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """patches[c] [n_c, B, C_c, h, w], clss[c] [n_c, B, Dc_c] per width class -> depth [G, B, H, W] (with
        ``stride``: at label pixels ``phase + stride * k`` of each axis only)."""
        fused = patches[0].device.type == "cpu" if self.fused is None else self.fused
        logits = []
        for c, x in enumerate(patches):
            l = torch.einsum("nkc,nbchw->nbhwk" if fused else "nkc,nbchw->nbkhw", self.Wp[c], x)
            bias = self.b[c][:, None, :]
            if self.use_cls:
                bias = bias + torch.einsum("nkd,nbd->nbk", self.Wc[c], clss[c])
            logits.append(l + (bias[:, :, None, None] if fused else bias[..., None, None]))
        B = logits[0].shape[1]
        h, w = logits[0].shape[2:4] if fused else logits[0].shape[-2:]
        up_r, up_c, out_r, out_c = self.mats(h, w, tuple(out_size), logits[0])
        K = self.bins.numel()
        order = self.order.to(logits[0].device)
        if fused:  # per width class, then back to the global head order (on the small [n, B, 4h, 4w] sums)
            sums = [bin_sums(l.reshape(-1, h, w, K), self.bins.to(l.dtype), self.upsample) for l in logits]
            num = torch.cat([n_.reshape(-1, B, *n_.shape[1:]) for n_, _ in sums])[order]
            den = torch.cat([d_.reshape(-1, B, *d_.shape[1:]) for _, d_ in sums])[order]
        else:
            L = torch.cat(logits)[order]  # [G, B, K, h, w]
            r = torch.relu(resize(L, up_r, up_c) if self.upsample != 1 else L)  # [G, B, K, 4h, 4w]
            T = torch.stack([self.bins, torch.ones_like(self.bins)], 1).to(r.dtype)  # [K, 2]
            nd = torch.einsum("gbkyx,kt->gbtyx", r, T)
            num, den = nd[:, :, 0], nd[:, :, 1]
        depth = (num + 0.1 * self.bins.sum()) / (den + 0.1 * K)  # = sum_k p_k bin_k, p = (relu + 0.1) normalised
        if stride > 1:
            out_r, out_c = out_r[phase[0]::stride].contiguous(), out_c[:, phase[1]::stride].contiguous()
        return resize(depth, out_r, out_c)

    def to_heads(self, heads: list[LinearDepthHead], state=None) -> list[LinearDepthHead]:
        Wp, Wc, b = state or self.state()
        for g, head in enumerate(heads):
            w = Wp[g] if Wc[g] is None else torch.cat([Wp[g], Wc[g]], 1)
            with torch.no_grad():
                head.conv.weight.copy_(w[:, :, None, None])
                head.conv.bias.copy_(b[g])
            head.eval()
        return heads


def train_depth_batched(patches: list[torch.Tensor], clss: list[torch.Tensor], depth: torch.Tensor,
                        settings: list[DepthSettings], val=None, val_every: int = 100) -> list[tuple[LinearDepthHead, dict]]:
    """Train one depth head per feature source x seed in one pass.

    patches[f] [N, D_f, h, w] and clss[f] [N, Dc_f]: the cached features of source f (same images, same
    order); depth [N, H, W] metres (0 invalid). ``settings``: one per seed, equal except ``seed``.
    ``val``: (val_patches [per source], val_clss [per source], val_depth [Nv, H, W]) picks each head's
    checkpoint by validation abs rel, as ``train_depth``. Returns [(head, log)] ordered seed-major:
    index = seed_index * n_sources + source_index; each log as ``train_depth``'s (``seconds`` is the
    shared wall time of the whole pass).
    """
    F_, S = len(patches), len(settings)
    s0 = settings[0]
    heads = []
    for s in settings:
        for f in range(F_):
            torch.manual_seed(s.seed)  # the separate trainer's initial weights
            heads.append(LinearDepthHead(patches[f].shape[1], clss[f].shape[1], s0.n_bins, s0.min_depth, s0.max_depth,
                                         use_cls=s0.use_cls).to(patches[f].device, patches[f].dtype))
    classes = _Classes.of([(patches[g % F_].shape[1], clss[g % F_].shape[1] if s0.use_cls else 0)
                           for g in range(S * F_)])
    stack = _StackedDepth(heads, classes)
    out_size = tuple(depth.shape[-2:])
    src_of = lambda g: g % F_  # noqa: E731
    dims = (2, 3, 4, 5)
    k, it = s0.label_stride, iter(range(s0.iterations))

    def step_losses(idx: list[torch.Tensor]) -> torch.Tensor:
        r, c = label_phase(k, next(it))
        gt = torch.stack([depth[i, r::k, c::k] for i in idx])[:, None, :, None].to(patches[0].dtype)  # [S, 1, B, 1, H/k, W/k]
        valid = valid_mask(gt, s0.min_depth, s0.max_depth)
        xs = [_gather(patches, m, src_of, lambda g: idx[g // F_]) for m in classes.members]
        cs = [_gather(clss, m, src_of, lambda g: idx[g // F_]) for m in classes.members]
        pred = stack.forward(xs, cs, out_size, k, (r, c))  # [G, B, H / k, W / k]
        pred = pred.reshape(S, F_, *pred.shape[1:])[:, :, :, None]  # [S, F, B, 1, H / k, W / k]
        return _depth_losses(pred, gt, valid, dims, s0.grad_weight, grid=k).reshape(-1)

    validate = None
    if val is not None:
        vp, vc, vd = val

        def validate(chunk: int = 4) -> torch.Tensor:
            """Validation abs rel per head ([G]), as ``depth_metrics`` (per-image mean over valid pixels)."""
            per_img = []
            for i in range(0, len(vd), chunk):
                sl = slice(i, i + chunk)
                xs = [torch.stack([vp[src_of(g)][sl] for g in m]) for m in classes.members]
                cs = [torch.stack([vc[src_of(g)][sl] for g in m]) for m in classes.members]
                p = stack.forward(xs, cs, tuple(vd.shape[-2:])).double().clamp(s0.min_depth, s0.max_depth)
                gt = vd[sl].double()[None]
                m = valid_mask(gt, s0.min_depth, s0.max_depth)
                rel = ((p - gt).abs() / gt.clamp(min=1e-12) * m).sum((-2, -1))
                n = m.sum((-2, -1))
                per_img.append(torch.where(n > 0, rel / n.clamp(min=1), torch.nan))
            per = torch.cat(per_img, 1)  # [G, Nv]
            return torch.nanmean(per, 1)

    loop = _Loop(stack.params(), len(heads), iterations=s0.iterations, lr=s0.lr, weight_decay=s0.weight_decay,
                 schedule="cosine", warmup=s0.warmup)
    out = loop.run(len(depth), s0.batch_size, [s.seed for s in settings], step_losses,
                   f"depth probe x{len(heads)}", validate, val_every, stack.state)
    state = stack.state()
    if validate is not None:
        state = [[out["best"][g][2][k] for g in range(len(heads))] for k in range(3)]
    return list(zip(stack.to_heads(heads, state), _logs(out, validate is not None)))


# --------------------------------------------------------------------------------------------------- seg


class _StackedSeg:
    """All seg heads (BN + 1x1 conv) as stacked tensors, BN in training mode with per-head statistics."""

    def __init__(self, heads: list[LinearSegHead], classes: _Classes):
        self.classes, self.order = classes, classes.order()
        bn = heads[0].bn
        self.eps, self.momentum = bn.eps, bn.momentum
        pick = lambda f, m: torch.stack([f(heads[g]).detach() for g in m]).clone()  # noqa: E731
        self.gamma = [pick(lambda h: h.bn.weight, m).requires_grad_() for m in classes.members]
        self.beta = [pick(lambda h: h.bn.bias, m).requires_grad_() for m in classes.members]
        self.W = [pick(lambda h: h.conv.weight[:, :, 0, 0], m).requires_grad_() for m in classes.members]
        self.b = [pick(lambda h: h.conv.bias, m).requires_grad_() for m in classes.members]
        self.rmean = [pick(lambda h: h.bn.running_mean, m) for m in classes.members]
        self.rvar = [pick(lambda h: h.bn.running_var, m) for m in classes.members]
        self.steps = 0
        self._mats: dict = {}

    def params(self) -> list[torch.Tensor]:
        return [*self.gamma, *self.beta, *self.W, *self.b]

    def forward(self, patches: list[torch.Tensor], out_size, stride: int = 1, phase: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """patches[c] [n_c, B, C_c, h, w] -> logits [G, B, classes, H, W] (with ``stride``: at label pixels
        ``phase + stride * k`` of each axis only); updates the BN running stats."""
        logits = []
        for c, x in enumerate(patches):
            mean = x.mean((1, 3, 4))  # [n, C]
            var = x.var((1, 3, 4), unbiased=False)
            shape = (x.shape[0], 1, x.shape[2], 1, 1)
            y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
            y = y * self.gamma[c].reshape(shape) + self.beta[c].reshape(shape)
            with torch.no_grad():  # BatchNorm2d's running statistics (unbiased variance)
                n = x.numel() // (x.shape[0] * x.shape[2])
                self.rmean[c].mul_(1 - self.momentum).add_(self.momentum * mean.detach())
                self.rvar[c].mul_(1 - self.momentum).add_(self.momentum * var.detach() * n / max(1, n - 1))
            logits.append(torch.einsum("nkc,nbchw->nbkhw", self.W[c], y) + self.b[c][:, None, :, None, None])
        self.steps += 1
        L = torch.cat(logits)[self.order.to(logits[0].device)]
        key = (*L.shape[-2:], tuple(out_size), L.dtype, L.device)
        if key not in self._mats:
            (h, w), (H, W) = L.shape[-2:], out_size
            self._mats[key] = (interp_matrix(h, H, L.dtype, L.device), interp_matrix(w, W, L.dtype, L.device).T.contiguous())
        rows, cols_t = self._mats[key]
        if stride > 1:
            rows, cols_t = rows[phase[0]::stride].contiguous(), cols_t[:, phase[1]::stride].contiguous()
        return resize(L, rows, cols_t)

    def to_heads(self, heads: list[LinearSegHead]) -> list[LinearSegHead]:
        for c, members in enumerate(self.classes.members):
            for i, g in enumerate(members):
                h = heads[g]
                with torch.no_grad():
                    h.bn.weight.copy_(self.gamma[c][i])
                    h.bn.bias.copy_(self.beta[c][i])
                    h.bn.running_mean.copy_(self.rmean[c][i])
                    h.bn.running_var.copy_(self.rvar[c][i])
                    h.bn.num_batches_tracked.fill_(self.steps)
                    h.conv.weight.copy_(self.W[c][i][:, :, None, None])
                    h.conv.bias.copy_(self.b[c][i])
                h.eval()
        return heads


def train_seg_batched(patches: list[torch.Tensor], labels: torch.Tensor, num_classes: int,
                      settings: list[SegSettings]) -> list[tuple[LinearSegHead, dict]]:
    """Train one seg head per feature source x seed in one pass (as ``train_seg`` each).

    patches[f] [N, D_f, h, w]; labels [N, H, W] int (``ignore_index`` allowed); ``settings`` one per seed.
    Returns [(head, log)] seed-major (index = seed_index * n_sources + source_index).
    """
    F_, S = len(patches), len(settings)
    s0 = settings[0]
    heads = []
    for s in settings:
        for f in range(F_):
            torch.manual_seed(s.seed)
            heads.append(LinearSegHead(patches[f].shape[1], num_classes).to(patches[f].device, patches[f].dtype))
    classes = _Classes.of([(patches[g % F_].shape[1], 0) for g in range(S * F_)])
    stack = _StackedSeg(heads, classes)
    out_size = tuple(labels.shape[-2:])
    k, it = s0.label_stride, iter(range(s0.iterations))

    def step_losses(idx: list[torch.Tensor]) -> torch.Tensor:
        r, c = label_phase(k, next(it))
        lab = torch.stack([labels[i, r::k, c::k].long() for i in idx])  # [S, B, H / k, W / k]
        xs = [_gather(patches, m, lambda g: g % F_, lambda g: idx[g // F_]) for m in classes.members]
        logits = stack.forward(xs, out_size, k, (r, c))  # [G, B, C, H / k, W / k]
        lab_g = lab[:, None].expand(S, F_, *lab.shape[1:]).reshape(-1, *lab.shape[2:])  # [G * B, H, W]
        ce = F.cross_entropy(logits.flatten(0, 1), lab_g, ignore_index=s0.ignore_index, reduction="none")
        keep = (lab_g != s0.ignore_index).to(ce.dtype)
        ce, keep = ce.reshape(S * F_, -1), keep.reshape(S * F_, -1)
        return ce.sum(1) / keep.sum(1).clamp(min=1)  # the mean over kept pixels, as train_seg (0 if none)

    loop = _Loop(stack.params(), len(heads), iterations=s0.iterations, lr=s0.lr, weight_decay=s0.weight_decay,
                 schedule="poly", warmup=s0.warmup)
    out = loop.run(len(labels), s0.batch_size, [s.seed for s in settings], step_losses, f"seg probe x{len(heads)}")
    return list(zip(stack.to_heads(heads), _logs(out, False)))
