"""EWA projection on the CPU with numba: :func:`fit3d.splat.projection.project` as one loop per Gaussian.

The same maths, culling rules and outputs as the torch projection (its reference: tests hold values
and gradients to it with ``assert_close``), with a hand-written backward. Hand-written because the torch
version is ~60 elementwise ops over [N] tensors forward and as many backward, each a pass over memory
with its own allocation: at 50k Gaussians on 2 cores ~20 ms forward and ~35 ms backward per view, most
of a colour iteration; one fused loop per Gaussian takes a few ms (gsplat's ``fully_fused_projection`` is
the CUDA equivalent). Computes in float64 per Gaussian and stores in the inputs' dtype. Gradients reach
means, quats and scales (not the camera); opacities pass through an index outside.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch
from torch import Tensor

from fit3d.splat.projection import ALPHA_THRESHOLD, FAR_PLANE, Projected


@nb.njit(cache=True, inline="always")
def _rotmat(q, R):
    """R [3, 3] (filled) of a quaternion q [4] (w, x, y, z) of any norm; returns (w, x, y, z) normalised, norm."""
    q0, q1, q2, q3 = np.float64(q[0]), np.float64(q[1]), np.float64(q[2]), np.float64(q[3])
    nrm = math.sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3)
    w, x, y, z = q0 / nrm, q1 / nrm, q2 / nrm, q3 / nrm
    R[0, 0], R[0, 1], R[0, 2] = 1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)
    R[1, 0], R[1, 1], R[1, 2] = 2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)
    R[2, 0], R[2, 1], R[2, 2] = 2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)
    return w, x, y, z, nrm


@nb.njit(cache=True)
def _forward_kernel(means, quats, scales, opac, Wr, t, cam, lims, width, height, near, far, eps2d,
                    m2d, con, dep, rad, ok):
    fx, fy, cx, cy = cam[0], cam[1], cam[2], cam[3]
    R, WRS = np.empty((3, 3)), np.empty((3, 3))
    for i in range(means.shape[0]):
        ok[i] = False
        m0, m1, m2 = np.float64(means[i, 0]), np.float64(means[i, 1]), np.float64(means[i, 2])
        z = Wr[2, 0] * m0 + Wr[2, 1] * m1 + Wr[2, 2] * m2 + t[2]
        if not (z >= near and z <= far):
            continue
        x = Wr[0, 0] * m0 + Wr[0, 1] * m1 + Wr[0, 2] * m2 + t[0]
        y = Wr[1, 0] * m0 + Wr[1, 1] * m1 + Wr[1, 2] * m2 + t[1]
        _rotmat(quats[i], R)
        for r in range(3):
            for c in range(3):
                WRS[r, c] = (Wr[r, 0] * R[0, c] + Wr[r, 1] * R[1, c] + Wr[r, 2] * R[2, c]) * scales[i, c]
        rz = 1.0 / z
        tx = z * min(lims[0], max(-lims[1], x * rz))
        ty = z * min(lims[2], max(-lims[3], y * rz))
        A0, B0, A1, B1 = fx * rz, fx * tx * rz * rz, fy * rz, fy * ty * rz * rz
        a, b, c = eps2d, 0.0, eps2d
        for j in range(3):
            p0 = A0 * WRS[0, j] - B0 * WRS[2, j]
            p1 = A1 * WRS[1, j] - B1 * WRS[2, j]
            a += p0 * p0
            b += p0 * p1
            c += p1 * p1
        det = a * c - b * b
        u, v = fx * x * rz + cx, fy * y * rz + cy
        op = opac[i]
        if not (det > 0 and op >= ALPHA_THRESHOLD and math.isfinite(u) and math.isfinite(v)):
            continue
        extend = min(math.sqrt(2.0 * math.log(max(op, ALPHA_THRESHOLD) / ALPHA_THRESHOLD)), 3.33)
        rx, ry = math.ceil(extend * math.sqrt(max(a, 0.0))), math.ceil(extend * math.sqrt(max(c, 0.0)))
        if not ((rx > 0 or ry > 0) and u + rx > 0 and u - rx < width and v + ry > 0 and v - ry < height):
            continue
        ok[i] = True
        m2d[i, 0], m2d[i, 1] = u, v
        con[i, 0], con[i, 1], con[i, 2] = c / det, -b / det, a / det
        dep[i] = z
        rad[i, 0], rad[i, 1] = rx, ry


@nb.njit(cache=True)
def _backward_kernel(ids, means, quats, scales, Wr, t, cam, lims, eps2d, g_m2d, g_con, g_dep, g_means, g_quats,
                     g_scales):
    fx, fy = cam[0], cam[1]
    R, WR, WRS, gWRS, gR = np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3)), np.empty((3, 3))
    P0, P1 = np.empty(3), np.empty(3)
    for k in range(ids.shape[0]):
        i = ids[k]
        # the forward again (per Gaussian: cheaper than storing its intermediates), written out rather than
        # shared with _forward_kernel: an inlined helper returning the intermediates made the forward
        # 5.7 -> 7.8 ms at 55k Gaussians; tests/splat/test_projection_numba.py holds the two to the torch code
        m0, m1, m2 = np.float64(means[i, 0]), np.float64(means[i, 1]), np.float64(means[i, 2])
        x = Wr[0, 0] * m0 + Wr[0, 1] * m1 + Wr[0, 2] * m2 + t[0]
        y = Wr[1, 0] * m0 + Wr[1, 1] * m1 + Wr[1, 2] * m2 + t[1]
        z = Wr[2, 0] * m0 + Wr[2, 1] * m1 + Wr[2, 2] * m2 + t[2]
        qw, qx, qy, qz, nrm = _rotmat(quats[i], R)
        for r in range(3):
            for c in range(3):
                WR[r, c] = Wr[r, 0] * R[0, c] + Wr[r, 1] * R[1, c] + Wr[r, 2] * R[2, c]
                WRS[r, c] = WR[r, c] * scales[i, c]
        rz = 1.0 / z
        ux, uy = x * rz, y * rz
        vx, vy = min(lims[0], max(-lims[1], ux)), min(lims[2], max(-lims[3], uy))
        tx, ty = z * vx, z * vy
        A0, B0, A1, B1 = fx * rz, fx * tx * rz * rz, fy * rz, fy * ty * rz * rz
        a, b, c = eps2d, 0.0, eps2d
        for j in range(3):
            P0[j] = A0 * WRS[0, j] - B0 * WRS[2, j]
            P1[j] = A1 * WRS[1, j] - B1 * WRS[2, j]
            a += P0[j] * P0[j]
            b += P0[j] * P1[j]
            c += P1[j] * P1[j]
        det = a * c - b * b
        # conic (c, -b, a) / det -> a, b, c
        g0, g1, g2 = g_con[k, 0], g_con[k, 1], g_con[k, 2]
        gd = -(g0 * c - g1 * b + g2 * a) / (det * det)
        ga, gb, gc = g2 / det + gd * c, -g1 / det - 2.0 * gd * b, g0 / det + gd * a
        # a, b, c -> P -> WRS and the Jacobian's entries
        gA0 = gB0 = gA1 = gB1 = 0.0
        for j in range(3):
            gp0 = 2.0 * ga * P0[j] + gb * P1[j]
            gp1 = gb * P0[j] + 2.0 * gc * P1[j]
            gWRS[0, j], gWRS[1, j], gWRS[2, j] = A0 * gp0, A1 * gp1, -B0 * gp0 - B1 * gp1
            gA0 += gp0 * WRS[0, j]
            gB0 -= gp0 * WRS[2, j]
            gA1 += gp1 * WRS[1, j]
            gB1 -= gp1 * WRS[2, j]
        gu, gv = g_m2d[k, 0], g_m2d[k, 1]
        grz = fx * gA0 + fy * gA1 + 2.0 * fx * tx * rz * gB0 + 2.0 * fy * ty * rz * gB1 + fx * x * gu + fy * y * gv
        gx, gy, gz = fx * rz * gu, fy * rz * gv, g_dep[k]
        gtx, gty = fx * rz * rz * gB0, fy * rz * rz * gB1
        gz += gtx * vx + gty * vy  # t = z * clamp(x / z): the clamp passes its gradient only inside the limits
        if -lims[1] < ux < lims[0]:
            gx += gtx * z * rz
            grz += gtx * z * x
        if -lims[3] < uy < lims[2]:
            gy += gty * z * rz
            grz += gty * z * y
        gz -= rz * rz * grz
        for j in range(3):
            g_means[i, j] = Wr[0, j] * gx + Wr[1, j] * gy + Wr[2, j] * gz
        # WRS = (Wr R) diag(s) -> s, R -> the normalised quaternion -> the quaternion
        for j in range(3):
            s = 0.0
            for r in range(3):
                s += gWRS[r, j] * WR[r, j]
            g_scales[i, j] = s
            for r in range(3):
                gR[r, j] = (Wr[0, r] * gWRS[0, j] + Wr[1, r] * gWRS[1, j] + Wr[2, r] * gWRS[2, j]) * scales[i, j]
        gw = 2 * (-qz * gR[0, 1] + qy * gR[0, 2] + qz * gR[1, 0] - qx * gR[1, 2] - qy * gR[2, 0] + qx * gR[2, 1])
        gxq = 2 * (qy * gR[0, 1] + qz * gR[0, 2] + qy * gR[1, 0] - 2 * qx * gR[1, 1] - qw * gR[1, 2]
                   + qz * gR[2, 0] + qw * gR[2, 1] - 2 * qx * gR[2, 2])
        gyq = 2 * (-2 * qy * gR[0, 0] + qx * gR[0, 1] + qw * gR[0, 2] + qx * gR[1, 0] + qz * gR[1, 2]
                   - qw * gR[2, 0] + qz * gR[2, 1] - 2 * qy * gR[2, 2])
        gzq = 2 * (-2 * qz * gR[0, 0] - qw * gR[0, 1] + qx * gR[0, 2] + qw * gR[1, 0] - 2 * qz * gR[1, 1]
                   + qy * gR[1, 2] + qx * gR[2, 0] + qy * gR[2, 1])
        dot = qw * gw + qx * gxq + qy * gyq + qz * gzq
        g_quats[i, 0] = (gw - qw * dot) / nrm
        g_quats[i, 1] = (gxq - qx * dot) / nrm
        g_quats[i, 2] = (gyq - qy * dot) / nrm
        g_quats[i, 3] = (gzq - qz * dot) / nrm


def _camera(viewmat: Tensor, K: Tensor, width: int, height: int):
    """(Wr [3, 3], t [3], (fx, fy, cx, cy), Jacobian clamp limits (x+, x-, y+, y-)) as float64 arrays."""
    vm, Kn = viewmat.detach().double().cpu().numpy(), K.detach().double().cpu().numpy()
    fx, fy, cx, cy = Kn[0, 0], Kn[1, 1], Kn[0, 2], Kn[1, 2]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lims = np.array([(width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x,
                     (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y])
    return np.ascontiguousarray(vm[:3, :3]), np.ascontiguousarray(vm[:3, 3]), np.array([fx, fy, cx, cy]), lims


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, cam, width, height, near, far, eps2d):
        N, dt = means.shape[0], _np(means).dtype
        m2d, con, dep = np.zeros((N, 2), dt), np.zeros((N, 3), dt), np.zeros(N, dt)
        rad, ok = np.zeros((N, 2), np.int64), np.zeros(N, np.bool_)
        _forward_kernel(_np(means), _np(quats), _np(scales), _np(opacities), *cam, width, height, near, far, eps2d,
                        m2d, con, dep, rad, ok)
        ids = np.flatnonzero(ok)
        ctx.save_for_backward(means, quats, scales)
        ctx.ids, ctx.cam, ctx.eps2d = ids, cam, eps2d
        ids_t = torch.from_numpy(ids)
        ctx.mark_non_differentiable(ids_t)
        return ids_t, torch.from_numpy(m2d[ids]), torch.from_numpy(con[ids]), torch.from_numpy(dep[ids]), \
            torch.from_numpy(rad[ids])

    @staticmethod
    def backward(ctx, _g_ids, g_m2d, g_con, g_dep, _g_rad):
        means, quats, scales = ctx.saved_tensors
        M, dt = len(ctx.ids), means.dtype
        g_m2d = torch.zeros(M, 2, dtype=dt) if g_m2d is None else g_m2d
        g_con = torch.zeros(M, 3, dtype=dt) if g_con is None else g_con
        g_dep = torch.zeros(M, dtype=dt) if g_dep is None else g_dep
        gm, gq, gs = torch.zeros_like(means), torch.zeros_like(quats), torch.zeros_like(scales)
        Wr, t, cam, lims = ctx.cam
        _backward_kernel(ctx.ids, _np(means), _np(quats), _np(scales), Wr, t, cam, lims, ctx.eps2d,
                         _np(g_m2d.to(dt)), _np(g_con.to(dt)), _np(g_dep.to(dt)), gm.numpy(), gq.numpy(), gs.numpy())
        return gm, gq, gs, None, None, None, None, None, None, None


def project(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmat: Tensor,
            K: Tensor, width: int, height: int, *, near_plane: float = 0.01, eps2d: float = 0.3,
            far_plane: float = FAR_PLANE) -> Projected:
    """:func:`fit3d.splat.projection.project` on CPU tensors (same arguments and outputs)."""
    width, height = int(width), int(height)
    cam = _camera(viewmat, K, width, height)
    ids, m2d, con, dep, rad = _Project.apply(means, quats, scales, opacities.detach(), cam, width, height,
                                             float(near_plane), float(far_plane), float(eps2d))
    return Projected(ids=ids, means2d=m2d, conics=con, depths=dep, opacities=opacities[ids], radii=rad)
