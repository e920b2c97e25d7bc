"""DPM-Solver++ (data prediction), multistep, orders 1-3, for the EDM/VE form (alpha = 1, lambda = -log sigma).

Step from sigma_s to sigma_t with h = log(sigma_s / sigma_t) and r = sigma_t / sigma_s = exp(-h):
    order 1:  x_t = r x_s + (1 - r) D_s                      (DDIM)
    order 2:  adds  +0.5 (1 - r) D1                           D1 = (D_s - D_prev) / r0
    order 3:  adds  ((r - 1)/h + 1) D1' - ((r - 1 + h)/h^2 - 0.5) D2  (Lu et al. 2022, multistep)
The first steps lack history, so order ramps up 1, 2, 3; with `lower_order_final` the last steps ramp down
again (order <= steps left), which keeps the final jump to sigma_min stable. One NFE per step.
"""

import math

from .states import ode_solver


@ode_solver
def dpmpp(denoiser, x, sigmas, class_labels=None, order: int = 3, lower_order_final: bool = True):
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    sig = sigmas.tolist()
    lam = [-math.log(s) for s in sig]
    n = len(sig) - 1
    hist = []  # hist: denoised outputs, newest last
    for i in range(n):
        hist = (hist + [denoiser(x, sig[i], class_labels)])[-3:]
        k = min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)
        h = lam[i + 1] - lam[i]
        r = sig[i + 1] / sig[i]
        d0 = hist[-1]
        x_next = r * x + (1 - r) * d0
        if k >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1_0 = (hist[-1] - hist[-2]) / r0
            if k == 2:
                x_next = x_next + 0.5 * (1 - r) * d1_0
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                d1_1 = (hist[-2] - hist[-3]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x_next = x_next + ((r - 1) / h + 1) * d1 - ((r - 1 + h) / h**2 - 0.5) * d2
        x = x_next
        yield x
