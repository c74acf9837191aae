"""Stage 1 without feature optimisation (``LiftConfig.method = "solve"``): features in closed form.

With geometry fixed, each Gaussian's feature is the average of the target tokens over the training pixels
it contributes to, weighted by its compositing weight there (alpha x transmittance):
``f_j = sum_p w_pj F(p) / sum_p w_pj`` (learning-free uplifting, LUDVIG). ``sum_p w_pj F(p)`` is the
gradient of ``<render(c), F>`` w.r.t. per-Gaussian channels ``c``, so the rasterizer's backward gives it
(render zeros that require grad, backward ``F``; the denominator is the same with ``F = 1``): no new kernel.
F is taken in the training tokens' top-``feature_dim`` (uncentred) PCA basis, the decoder's centre tap
(``pca_init_decoder``); the average commutes with that linear map, so this equals averaging the full
D-wide tokens and projecting afterwards. CG on the least-squares problem of the rendered features then
starts from that average; finally every tap of the decoder is fitted by least squares to the tokens from
the rendered solution (``fit_decoder``), which replaces the PCA basis the features were solved in.

Modules, in the order the method runs: ``geometry`` (depth fused into surfels, settled by colour-only
training), ``basis`` (the targets in the decoder's basis), ``weights`` (every view's compositing weights as
one sparse matrix) or ``passes`` (the same products by rasterisation, other backends), ``cg`` (the weighted
average, the ridge chosen on held-back views, conjugate gradient), ``features`` (that sequence for one
scene), ``lsq_decoder`` (the decoder by least squares), ``refine`` (optional gradient refinement) and
``driver`` (``solve_scene``, the method's entry in ``fit3d.lift.methods.METHODS``).
"""

from fit3d.lift.solve.driver import solve_scene

__all__ = ["solve_scene"]
