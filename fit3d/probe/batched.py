"""Batched probe heads: the heads of every (feature source, seed) of a run trained in one pass.

The separate trainers (``depth.train_depth``, ``seg.train_seg``) train one head at a time; a run with
3 sources x 3 seeds repeats the same loop 9 times. Here all heads step together:

- the features as base tensors (``_Layout``): a source that concatenates two others (concat = original +
  fine-tuned, the width control = original twice) reads their tensors instead of its own, so each seed's
  batch of a base is gathered once, and one ``einsum`` per base multiplies it by the weight blocks of
  every head reading it ([S, slots, K, D_b] stacked; a head reading a base twice sums its two blocks
  first, the same logits at half the multiply-adds); the heads' logits are the sums of their parts'. A
  seg head's BN is per channel with the batch's statistics, so each base is normalised once per seed and
  the heads' BN scale / shift are folded into their weight blocks;
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
- on the CPU the depth loss is one numba pass per head (``fit3d.probe.depth_loss``; ``_depth_losses`` is the
  reference and the other devices' path);
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

from fit3d.device import adamw
from fit3d.errors import NonFiniteError
from fit3d.resize import interp_matrix, resize  # noqa: F401 - resize is also this module's API
from fit3d.probe.depth_bins import bin_sums
from fit3d.probe.depth_loss import depth_losses
from fit3d.probe.depth import DepthSettings, LinearDepthHead, log_gradient_loss, valid_mask
from fit3d.probe.seg import LinearSegHead, SegSettings
from fit3d.probe.train import batch_order, label_phase, lr_factor


class _Layout:
    """Which base feature tensors each head source reads, concatenated along channels.

    ``parts[f]``: the base indices of source f, in channel order (one source per base by default; concat =
    (original, fine-tuned), the width control = (original, original)). The product of each base with the
    weight blocks of every source reading it is one matmul per base (``rows[b]``: those sources in order), and
    a base is gathered once per seed. A source reading a base twice sums its two weight blocks first
    (``combine[b]``): the same logits as its own [x, x] product, with half the multiply-adds.
    """

    def __init__(self, parts: list[tuple[int, ...]], widths: list[int]):
        self.parts, self.widths = [tuple(int(b) for b in p) for p in parts], list(widths)
        if not self.parts or any(not p for p in self.parts):
            raise ValueError("every head source reads at least one base feature tensor")
        nb = len(widths)
        if any(b < 0 or b >= nb for p in self.parts for b in p):
            raise ValueError(f"parts {parts} name a base outside the {nb} given")
        self.slots = [[(f, j) for f, p in enumerate(self.parts) for j, q in enumerate(p) if q == b] for b in range(nb)]
        self.rows = [list(dict.fromkeys(f for f, _ in sl)) for sl in self.slots]
        self.combine = []
        for sl, rows in zip(self.slots, self.rows):
            a = None
            if len(rows) != len(sl):  # [slots, rows] 0/1: a row sums its source's slots
                a = torch.zeros(len(sl), len(rows))
                for i, (f, _) in enumerate(sl):
                    a[i, rows.index(f)] = 1.0
            self.combine.append(a)
        self.offsets = [[sum(widths[q] for q in p[:j]) for j in range(len(p))] for p in self.parts]

    def width(self, f: int) -> int:
        return sum(self.widths[b] for b in self.parts[f])

    def split(self, f: int, w: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        """[(base, slot index, w's columns of that part)] of source f's weight ``w`` [..., width(f)]."""
        out = []
        for j, b in enumerate(self.parts[f]):
            o = self.offsets[f][j]
            out.append((b, self.slots[b].index((f, j)), w[..., o:o + self.widths[b]]))
        return out

    def stacked(self, per_head: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per base [S, n_slots_b, ..., D_b] (new tensors) from each head's tensor ``per_head[g]`` [..., width(f)]
        (head g = seed * sources + source)."""
        F_, nb = len(self.parts), len(self.widths)
        S = len(per_head) // F_
        blocks = [[[None] * len(self.slots[b]) for b in range(nb)] for _ in range(S)]
        for g, t in enumerate(per_head):
            s, f = divmod(g, F_)
            for b, i, part in self.split(f, t):
                blocks[s][b][i] = part
        return [torch.stack([torch.stack(blocks[s][b]) for s in range(S)]).clone() for b in range(nb)]

    def joined(self, f: int, blocks: list[torch.Tensor]) -> torch.Tensor:
        """Source f's weight from its per-base blocks ``blocks[b]`` [n_slots_b, ..., D_b] (one seed)."""
        return torch.cat([blocks[b][self.slots[b].index((f, j))] for j, b in enumerate(self.parts[f])], -1)

    def logits(self, xs: list[torch.Tensor], weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per source [S, B, h, w, K]: the sum over its parts of each base's product. xs[b] [S, B, h, w, D_b]
        (channels last: the product is a plain batched matmul); weights[b] [S, n_slots_b, K, D_b]."""
        per_base = []
        for b, (x, w) in enumerate(zip(xs, weights)):
            if self.combine[b] is not None:
                w = torch.einsum("sqkc,qr->srkc", w, self.combine[b].to(w.dtype).to(w.device))
            S, R, K, D = w.shape
            # x [S, B h w, D] @ w^T [S, D, R K] with w^T contiguous (bmm took twice as long on the transposed view)
            y = torch.matmul(x.reshape(S, -1, D), w.reshape(S, R * K, D).transpose(1, 2).contiguous())
            # unbind, not indexing: its backward stacks the rows' gradients (indexing's fills zeros of the whole)
            per_base.append(y.reshape(*x.shape[:-1], R, K).unbind(-2))
        out = []
        for f, p in enumerate(self.parts):
            terms = [per_base[b][self.rows[b].index(f)] for b in dict.fromkeys(p)]
            out.append(terms[0] if len(terms) == 1 else sum(terms[1:], terms[0]))
        return out


def concatenations(patches: list[torch.Tensor]) -> list[tuple[int, ...]]:
    """Per source, the two other sources it is the channel concatenation of, checked element for element
    (concat = (original, fine-tuned), the width control = (original, original)), else (itself,)."""
    def same(a: torch.Tensor, b: torch.Tensor) -> bool:  # one image first: a mismatch costs no full pass
        return (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a[:1], b[:1])
                and torch.equal(a, b))

    parts: list[tuple[int, ...]] = [(f,) for f in range(len(patches))]
    for f in sorted(range(len(patches)), key=lambda i: patches[i].shape[1]):  # narrower sources are decided first
        t, w = patches[f], patches[f].shape[1]
        plain = [a for a in range(len(patches)) if a != f and parts[a] == (a,) and patches[a].shape[1] < w]
        for a in plain:
            wa = patches[a].shape[1]
            if not same(t[:, :wa], patches[a]):
                continue
            b = next((b for b in plain if patches[b].shape[1] == w - wa and same(t[:, wa:], patches[b])), None)
            if b is not None:
                parts[f] = (a, b)
                break
    return parts


def _bases(patches: list[torch.Tensor], parts, vals: list[torch.Tensor] | None = None):
    """(base tensors, parts over them, validation bases) of a trainer's call: ``parts`` given: ``patches`` are
    the bases; None: the sources, with the concatenations among them (``concatenations``) read from their
    parts when the validation tensors (if any) are made the same way."""
    if parts is not None:
        return list(patches), [tuple(p) for p in parts], vals
    found = concatenations(patches)
    if vals is not None and any(len(p) > 1 and not torch.equal(vals[f], torch.cat([vals[b] for b in p], 1))
                                for f, p in enumerate(found)):
        found = [(f,) for f in range(len(patches))]
    used = sorted({b for p in found for b in p})
    pos = {b: i for i, b in enumerate(used)}
    return ([patches[b] for b in used], [tuple(pos[b] for b in p) for p in found],
            None if vals is None else [vals[b] for b in used])


def _layout(bases: list[torch.Tensor], parts) -> _Layout:
    return _Layout(parts, [int(p.shape[1]) for p in bases])


def _depth_losses(pred, gt, valid, sources: int, grad_weight: float, lam: float = 0.15, eps: float = 1e-3,
                  grid: int = 1) -> torch.Tensor:
    """``depth.sig_loss + grad_weight * depth.gradient_loss`` per head, with masked sums instead of
    boolean indexing (same value) and the log difference computed once for both terms: pred [G, B, H, W]
    (head g = seed * sources + source), gt and valid [S, B, H, W] -> [G]. The tensor-op reference of
    ``depth_loss.depth_losses`` (same arguments) and the path on devices other than the CPU."""
    S = gt.shape[0]
    pred = pred.reshape(S, sources, *pred.shape[1:])[:, :, :, None]  # [S, F, B, 1, H, W]
    gt, valid = gt[:, None, :, None], valid[:, None, :, None]  # [S, 1, B, 1, H, W]
    dims = (2, 3, 4, 5)
    m = valid.to(pred.dtype)
    g = (torch.log(pred + eps) - torch.log(gt + eps)) * m
    n = m.expand_as(g).sum(dims)
    mean = g.sum(dims) / n.clamp(min=1)
    shape = mean.shape + (1,) * len(dims)
    var = (((g - mean.reshape(shape)) * m) ** 2).sum(dims) / (n - 1).clamp(min=1)  # unbiased as torch.var
    sig = torch.where(n >= 2, torch.sqrt(var + lam * mean ** 2), pred.sum(dims) * 0.0)
    return (sig + grad_weight * log_gradient_loss(g, m, dims=dims, grid=grid)).reshape(-1)


class _Loop:
    """The shared loop: AdamW + schedule over stacked params, per-seed batches, best-checkpoint bookkeeping."""

    def __init__(self, params: list[torch.Tensor], n_heads: int, *, iterations, lr, weight_decay, schedule,
                 warmup):
        self.params, self.n_heads, self.iterations = params, n_heads, iterations
        self.opt = adamw(params, lr=lr, weight_decay=weight_decay)
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
    """All depth heads as stacked tensors (seed-major, head g = seed * sources + source); ``forward`` gives
    depth [G, B, H, W] from the seeds' batches of the base features."""

    fused: bool | None = None  # the numba tail (depth_bins) and loss (depth_loss); None: on CPU, tensor ops elsewhere

    def __init__(self, heads: list[LinearDepthHead], layout: _Layout):
        self.layout, self.use_cls = layout, heads[0].use_cls
        self.upsample, self.bins = heads[0].upsample, heads[0].bins
        F_ = len(layout.parts)
        self.S = len(heads) // F_
        w = [heads[g].conv.weight.detach()[:, :, 0, 0] for g in range(len(heads))]  # [K, C_f + Dc_f]
        self.Wp = [t.requires_grad_() for t in layout.stacked([wg[:, :layout.width(g % F_)] for g, wg in enumerate(w)])]
        self.Wc = [torch.stack([w[s * F_ + f][:, layout.width(f):] for s in range(self.S)]).clone().requires_grad_()
                   if self.use_cls else None for f in range(F_)]  # [S, K, Dc_f]
        self.b = torch.stack([h.conv.bias.detach() for h in heads]).reshape(self.S, F_, -1).clone().requires_grad_()
        self._mats: dict = {}

    def on_fused(self, t: torch.Tensor) -> bool:
        """Whether tensors like ``t`` take the numba tail and loss (``fused``; None: on the CPU)."""
        return t.device.type == "cpu" if self.fused is None else self.fused

    def params(self) -> list[torch.Tensor]:
        return [t for t in (*self.Wp, *self.Wc, self.b) if t is not None]

    def state(self) -> list[list[torch.Tensor]]:
        """Per global head: [patch weight, cls weight | None, bias] (detached clones)."""
        F_ = len(self.layout.parts)
        out: list[list] = [[], [], []]
        for s in range(self.S):
            for f in range(F_):
                out[0].append(self.layout.joined(f, [w[s].detach() for w in self.Wp]).clone())
                out[1].append(None if self.Wc[f] is None else self.Wc[f][s].detach().clone())
                out[2].append(self.b[s, f].detach().clone())
        return out

    def mats(self, h: int, w: int, out_size: tuple[int, int], ref: torch.Tensor):
        key = (h, w, out_size, ref.dtype, ref.device)
        if key not in self._mats:
            u, (H, W) = self.upsample, out_size
            mk = lambda a, b: interp_matrix(a, b, ref.dtype, ref.device)  # noqa: E731
            self._mats[key] = (mk(h, u * h), mk(w, u * w).T.contiguous(), mk(u * h, H), mk(u * w, W).T.contiguous())
        return self._mats[key]

    def forward(self, xs: list[torch.Tensor], clss: list[torch.Tensor | None], out_size, stride: int = 1,
                phase: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """xs[b] [S, B, h, w, D_b] per base (``_seed_batches``), clss[f] [S, B, Dc_f] per source -> depth
        [G, B, H, W] (with ``stride``: at label pixels ``phase + stride * k`` of each axis only)."""
        fused = self.on_fused(xs[0])
        per = self.layout.logits(xs, self.Wp)  # per source [S, B, h, w, K]
        for f in range(len(per)):
            bias = self.b[:, f, None, :]  # [S, 1, K]
            if self.use_cls:
                bias = bias + torch.einsum("skd,sbd->sbk", self.Wc[f], clss[f])
            per[f] = per[f] + bias[:, :, None, None, :]
        S, B, h, w, K = per[0].shape
        up_r, up_c, out_r, out_c = self.mats(h, w, tuple(out_size), per[0])
        if fused:  # per source (no stacked copy of the logits), then the [S, B, 4h, 4w] sums stacked to [G, ...]
            sums = [bin_sums(p.reshape(-1, h, w, K), self.bins.to(p.dtype), self.upsample) for p in per]
            num, den = (torch.stack([t[i].reshape(S, B, *t[i].shape[1:]) for t in sums], 1).flatten(0, 1)
                        for i in (0, 1))
        else:
            L = torch.stack(per, 1).flatten(0, 1).permute(0, 1, 4, 2, 3)  # [G, B, K, h, w]
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


def _seed_batches(bases: list[torch.Tensor], idx: list[torch.Tensor]) -> list[torch.Tensor]:
    """[S, B, ...] per base: each seed's batch, gathered once however many heads read the base; patch tokens
    [N, D, h, w] come channels last, [S, B, h, w, D], in the same one copy."""
    return [torch.stack([(x.permute(0, 2, 3, 1) if x.dim() == 4 else x)[i] for i in idx]) for x in bases]


def train_depth_batched(patches: list[torch.Tensor], clss: list[torch.Tensor], depth: torch.Tensor,
                        settings: list[DepthSettings], val=None, val_every: int = 100,
                        parts: list[tuple[int, ...]] | None = None) -> list[tuple[LinearDepthHead, dict]]:
    """Train one depth head per feature source x seed in one pass.

    patches[f] [N, D_f, h, w] and clss[f] [N, Dc_f]: the cached features of source f (same images, same
    order); depth [N, H, W] metres (0 invalid). A source that is the channel concatenation of two others
    (concat, the width control: ``concatenations``) is trained from their tensors: each seed's batch of a
    tensor is gathered once and multiplied once by the weight blocks of every head reading it (the same
    heads, up to float rounding). ``parts`` instead: ``patches`` are base tensors and ``parts[f]`` the bases
    source f concatenates (e.g. [(0,), (1,), (0, 1), (0, 0)]). ``settings``: one per seed, equal except
    ``seed``. ``val``: (val_patches [as ``patches``], val_clss [per source], val_depth [Nv, H, W]) picks each
    head's checkpoint by validation abs rel, as ``train_depth``.
    Returns [(head, log)] ordered seed-major: index = seed_index * n_sources + source_index; each log as
    ``train_depth``'s (``seconds`` is the shared wall time of the whole pass).
    """
    patches, parts, vp = _bases(patches, parts, None if val is None else list(val[0]))
    layout = _layout(patches, parts)
    F_, S = len(layout.parts), len(settings)
    if len(clss) != F_:
        raise ValueError(f"{len(clss)} [CLS] tensors for {F_} sources")
    s0 = settings[0]
    heads = []
    for s in settings:
        for f in range(F_):
            torch.manual_seed(s.seed)  # the separate trainer's initial weights
            heads.append(LinearDepthHead(layout.width(f), clss[f].shape[1], s0.n_bins, s0.min_depth, s0.max_depth,
                                         use_cls=s0.use_cls).to(patches[0].device, patches[0].dtype))
    stack = _StackedDepth(heads, layout)
    out_size = tuple(depth.shape[-2:])
    k, it = s0.label_stride, iter(range(s0.iterations))

    def step_losses(idx: list[torch.Tensor]) -> torch.Tensor:
        r, c = label_phase(k, next(it))
        gt = torch.stack([depth[i, r::k, c::k] for i in idx]).to(patches[0].dtype)  # [S, B, H/k, W/k]
        valid = valid_mask(gt, s0.min_depth, s0.max_depth)
        pred = stack.forward(_seed_batches(patches, idx), _seed_batches(clss, idx), out_size, k, (r, c))  # [G, B, H/k, W/k]
        loss = depth_losses if stack.on_fused(pred) else _depth_losses  # the numba loss (depth_loss) on the CPU
        return loss(pred, gt, valid, F_, s0.grad_weight, grid=k)

    validate = None
    if val is not None:
        _, vc, vd = val

        def validate(chunk: int = 4) -> torch.Tensor:
            """Validation abs rel per head ([G]), as ``depth_metrics`` (per-image mean over valid pixels)."""
            per_img = []
            for i in range(0, len(vd), chunk):
                sl = slice(i, i + chunk)
                every = [torch.arange(sl.start, min(sl.stop, len(vd)))] * S  # every seed's heads see the chunk
                p = stack.forward(_seed_batches(vp, every), _seed_batches(vc, every), tuple(vd.shape[-2:]))
                p = p.double().clamp(s0.min_depth, s0.max_depth)
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
    """All seg heads (BN + 1x1 conv) as stacked tensors, BN in training mode with per-head statistics.

    A head's BN normalises each input channel with its batch's statistics, so every head reading a base
    in a seed normalises it alike: the base is normalised once per seed, and each head's BN scale and shift
    are folded into its weight block (W diag(gamma) and W beta; ``logits = W (gamma x^ + beta) + b``). The
    running statistics are the base's, shared by the heads reading it."""

    def __init__(self, heads: list[LinearSegHead], layout: _Layout):
        self.layout = layout
        bn = heads[0].bn
        self.eps, self.momentum = bn.eps, bn.momentum
        F_ = len(layout.parts)
        self.S = len(heads) // F_
        stacked = lambda get: layout.stacked([get(h).detach() for h in heads])  # noqa: E731 - per base
        self.gamma = [t.requires_grad_() for t in stacked(lambda h: h.bn.weight)]
        self.beta = [t.requires_grad_() for t in stacked(lambda h: h.bn.bias)]
        self.W = [t.requires_grad_() for t in stacked(lambda h: h.conv.weight[:, :, 0, 0])]
        self.b = torch.stack([h.conv.bias.detach() for h in heads]).reshape(self.S, F_, -1).clone().requires_grad_()
        # the running statistics start equal in every head (BatchNorm2d's 0 / 1) and see the same batches
        self.rmean = [t[:, 0].clone() for t in stacked(lambda h: h.bn.running_mean)]  # [S, D_b]
        self.rvar = [t[:, 0].clone() for t in stacked(lambda h: h.bn.running_var)]
        self.steps = 0
        self._mats: dict = {}

    def params(self) -> list[torch.Tensor]:
        return [*self.gamma, *self.beta, *self.W, self.b]

    def forward(self, xs: list[torch.Tensor], out_size, stride: int = 1, phase: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """xs[b] [S, B, h, w, D_b] per base (``_seed_batches``) -> logits [G, B, classes, H, W] (with ``stride``:
        at label pixels ``phase + stride * k`` of each axis only); updates the BN running stats."""
        normed, weights, shifts = [], [], []
        for b, x in enumerate(xs):
            mean = x.mean((1, 2, 3))  # [S, D]
            shape = (x.shape[0], 1, 1, 1, x.shape[-1])
            c = x - mean.reshape(shape)
            var = c.square().mean((1, 2, 3))  # two-pass, as x.var(unbiased=False) but ~3x cheaper channels last
            normed.append(c / torch.sqrt(var.reshape(shape) + self.eps))
            with torch.no_grad():  # BatchNorm2d's running statistics (unbiased variance)
                n = x.numel() // (x.shape[0] * x.shape[-1])
                self.rmean[b].mul_(1 - self.momentum).add_(self.momentum * mean.detach())
                self.rvar[b].mul_(1 - self.momentum).add_(self.momentum * var.detach() * n / max(1, n - 1))
            weights.append(self.W[b] * self.gamma[b][:, :, None, :])  # [S, n_slots, K, D]
            shifts.append(torch.einsum("sqkc,sqc->sqk", self.W[b], self.beta[b]))
        self.steps += 1
        per = self.layout.logits(normed, weights)  # per source [S, B, h, w, K]
        for f in range(len(per)):
            shift = self.b[:, f]  # [S, K]
            for j, b in enumerate(self.layout.parts[f]):
                shift = shift + shifts[b][:, self.layout.slots[b].index((f, j))]
            per[f] = per[f] + shift[:, None, None, None, :]
        L = torch.stack(per, 1).flatten(0, 1).permute(0, 1, 4, 2, 3)  # [G, B, K, h, w]
        key = (*L.shape[-2:], tuple(out_size), L.dtype, L.device)
        if key not in self._mats:
            (h, w), (H, W) = L.shape[-2:], out_size
            self._mats[key] = (interp_matrix(h, H, L.dtype, L.device), interp_matrix(w, W, L.dtype, L.device).T.contiguous())
        rows, cols_t = self._mats[key]
        if stride > 1:
            rows, cols_t = rows[phase[0]::stride].contiguous(), cols_t[:, phase[1]::stride].contiguous()
        return resize(L, rows, cols_t)

    def to_heads(self, heads: list[LinearSegHead]) -> list[LinearSegHead]:
        F_ = len(self.layout.parts)
        for g, h in enumerate(heads):
            s, f = divmod(g, F_)
            join = lambda ts: self.layout.joined(f, [t[s].detach() for t in ts])  # noqa: E731
            stats = lambda ts: torch.cat([ts[b][s] for b in self.layout.parts[f]])  # noqa: E731
            with torch.no_grad():
                h.bn.weight.copy_(join(self.gamma))
                h.bn.bias.copy_(join(self.beta))
                h.bn.running_mean.copy_(stats(self.rmean))
                h.bn.running_var.copy_(stats(self.rvar))
                h.bn.num_batches_tracked.fill_(self.steps)
                h.conv.weight.copy_(join(self.W)[:, :, None, None])
                h.conv.bias.copy_(self.b[s, f])
            h.eval()
        return heads


def train_seg_batched(patches: list[torch.Tensor], labels: torch.Tensor, num_classes: int,
                      settings: list[SegSettings], parts: list[tuple[int, ...]] | None = None
                      ) -> list[tuple[LinearSegHead, dict]]:
    """Train one seg head per feature source x seed in one pass (as ``train_seg`` each).

    patches[f] [N, D_f, h, w] per source, or base tensors with ``parts``, as ``train_depth_batched``'s (so a
    concatenation of two sources is trained from their tensors); labels [N, H, W] int (``ignore_index``
    allowed); ``settings`` one per seed.
    Returns [(head, log)] seed-major (index = seed_index * n_sources + source_index).
    """
    patches, parts, _ = _bases(patches, parts)
    layout = _layout(patches, parts)
    F_, S = len(layout.parts), len(settings)
    s0 = settings[0]
    heads = []
    for s in settings:
        for f in range(F_):
            torch.manual_seed(s.seed)
            heads.append(LinearSegHead(layout.width(f), num_classes).to(patches[0].device, patches[0].dtype))
    stack = _StackedSeg(heads, layout)
    out_size = tuple(labels.shape[-2:])
    k, it = s0.label_stride, iter(range(s0.iterations))

    def step_losses(idx: list[torch.Tensor]) -> torch.Tensor:
        r, c = label_phase(k, next(it))
        lab = torch.stack([labels[i, r::k, c::k].long() for i in idx])  # [S, B, H / k, W / k]
        logits = stack.forward(_seed_batches(patches, idx), out_size, k, (r, c))  # [G, B, C, H / k, W / k]
        lab_g = lab[:, None].expand(S, F_, *lab.shape[1:]).reshape(-1, *lab.shape[2:])  # [G * B, H, W]
        ce = F.cross_entropy(logits.flatten(0, 1), lab_g, ignore_index=s0.ignore_index, reduction="none")
        keep = (lab_g != s0.ignore_index).to(ce.dtype)
        ce, keep = ce.reshape(S * F_, -1), keep.reshape(S * F_, -1)
        return ce.sum(1) / keep.sum(1).clamp(min=1)  # the mean over kept pixels, as train_seg (0 if none)

    loop = _Loop(stack.params(), len(heads), iterations=s0.iterations, lr=s0.lr, weight_decay=s0.weight_decay,
                 schedule="poly", warmup=s0.warmup)
    out = loop.run(len(labels), s0.batch_size, [s.seed for s in settings], step_losses, f"seg probe x{len(heads)}")
    return list(zip(stack.to_heads(heads), _logs(out, False)))
