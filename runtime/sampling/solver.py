"""DPM-Solver++ multistep in data-prediction form, orders 1-3 (docs/model.md section 5.1).

Lu et al. (2022), "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models":
Sec. 4.1 (the exact solution of the diffusion ODE in data-prediction form and its first-order
discretisation), Sec. 4.2 / Algorithm 2 (the 2M multistep update), and the third-order multistep
update of the same paper's code and of diffusers' DPMSolverMultistepScheduler
(`multistep_dpm_solver_third_order_update`), with one correction noted below. Notation: the solver
steps from time s (lambda_s) to time t (lambda_t), h = lambda_t - lambda_s > 0, and m_j = x0_hat at
the j-th latest model evaluation. The exact solution (Sec. 4.1) is

    x_t = (sigma_t / sigma_s) x_s + sigma_t * int_{lambda_s}^{lambda_t} e^lambda x0_hat(lambda) dlambda,

and order k approximates x0_hat(lambda) from its last k evaluations (degree k - 1 in lambda):

    order 1 (Sec. 4.1; DDIM): x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) m_0
    order 2 (Alg. 2, 2M):    r = h_prev / h,  D = (1 + 1/(2r)) m_0 - 1/(2r) m_1
                             x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D
    order 3 (3M):            r0 = h_0 / h, r1 = h_1 / h,
                             D1_0 = (m_0 - m_1) / r0,  D1_1 = (m_1 - m_2) / r1,
                             D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),  D2 = 2 (D1_0 - D1_1) / (r0 + r1)
                             x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) m_0
                                   + alpha_t ((e^-h - 1)/h + 1) D1 - alpha_t ((e^-h - 1 + h)/h^2 - 1/2) D2

Order 3 integrates the exact solution above exactly over the quadratic through the
last three x0_hat (D1 ~ h x0', D2 ~ h^2 x0''). diffusers' DPMSolverMultistepScheduler and the
DPM-Solver reference code write D2 without the factor 2, i.e. D2 ~ h^2 x0'' / 2, which makes their
"third-order" update only second-order accurate (local error O(h^3) instead of O(h^4));
tests/runtime/test_solver.py measures the local error order of each update here.

The order may differ per token (an int array broadcast over x): the lattice controller chooses it.
A token never gets more order than the history allows (first steps) and the last update, to clean
data (sigma_t = 0, lambda_t = +inf, h = inf), is always first order: there x_t = m_0.
All arithmetic is float64.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from dil.runtime.sampling.schedule import DEFAULT_SPACING, NoiseSchedule

MAX_ORDER = 3


class DPMSolverPP:
    """Multistep DPM-Solver++ over a fixed grid of M model-evaluation times.

    schedule: the noise schedule; steps: M, on the schedule's grid of that `spacing`
    (NoiseSchedule.sampling_grid: "logsnr", the default, or "time"), or kappas: float [M], any
    decreasing grid of evaluation times (spacing is then unused).
    Step i evaluates the model at kappas[i] and updates x from kappas[i] to kappas[i+1] (to clean
    data for i = M-1). State: the last MAX_ORDER x0_hat arrays and their lambdas (newest first).
    """

    def __init__(self, schedule: NoiseSchedule, steps: int | None = None, kappas=None,
                 spacing: str = DEFAULT_SPACING):
        if (steps is None) == (kappas is None):
            raise ValueError("give either steps or kappas")
        # a schedule's grid and tables are computed once per (schedule, steps, spacing)
        tables = _tables(schedule, kappas) if kappas is not None else _grid_tables(schedule, int(steps), spacing)
        self.kappas, self.alphas, self.sigmas, self.lambdas = tables
        self.steps = len(self.kappas)
        self.reset()

    def reset(self) -> None:
        """Forget the history (start of a new trajectory)."""
        self.x0_history: list[np.ndarray] = []  # newest first
        self.lambda_history: list[float] = []
        self.step_index = 0

    def max_order(self, i: int) -> int:
        """Highest order usable at step i: the history length after this step's evaluation,
        capped at MAX_ORDER, and 1 on the final step (to sigma = 0)."""
        if i == self.steps - 1:
            return 1
        return min(MAX_ORDER, i + 1)

    def step(self, x: np.ndarray, x0_hat: np.ndarray, order=1) -> np.ndarray:
        """One update x(kappas[i]) -> x(kappas[i+1]) with i = self.step_index, then i += 1.

        x, x0_hat: float64 arrays of one shape (e.g. [G, N, H]); x0_hat is the data prediction at
        kappas[i]. order: int or int array broadcastable to x.shape (per-token order), clipped to
        [1, max_order(i)]. Returns the new x, float64.
        """
        i = self.step_index
        if i >= self.steps:
            raise RuntimeError(f"the solver already took its {self.steps} steps (call reset())")
        x = np.asarray(x, dtype=np.float64)
        m0 = np.asarray(x0_hat, dtype=np.float64)
        self.x0_history = [m0] + self.x0_history[: MAX_ORDER - 1]
        self.lambda_history = [float(self.lambdas[i])] + self.lambda_history[: MAX_ORDER - 1]
        self.step_index = i + 1

        if i == self.steps - 1:  # to clean data: alpha_t = 1, sigma_t = 0, e^-h = 0
            return m0.copy()

        alpha_t, sigma_t = self.alphas[i + 1], self.sigmas[i + 1]
        lam = [float(self.lambdas[i + 1])] + self.lambda_history  # lambda_t, lambda_s0, lambda_s1, ...
        h = lam[0] - lam[1]
        phi = np.expm1(-h)  # e^-h - 1, accurate for small h
        base = (sigma_t / self.sigmas[i]) * x - alpha_t * phi * m0  # the order-1 update (Sec. 4.1)
        if np.ndim(order) == 0:  # one order for every token (the plain sampler): no masks, no selects
            k = min(max(int(order), 1), self.max_order(i))
            if k == 1:
                return base
            return self._second(base, h, lam, alpha_t, phi) if k == 2 else self._third(base, h, lam, alpha_t, phi)
        order = np.clip(np.asarray(order, dtype=np.int64), 1, self.max_order(i))
        orders = np.unique(order)
        out = base
        if 2 in orders:
            out = np.where(order == 2, self._second(base, h, lam, alpha_t, phi), out)
        if 3 in orders:
            out = np.where(order == 3, self._third(base, h, lam, alpha_t, phi), out)
        return out

    # -- higher-order corrections on top of the order-1 update -----------------------------------
    def _second(self, base, h, lam, alpha_t, phi):
        """Alg. 2: -alpha_t (e^-h - 1) * (m_0 - m_1) / (2 r), r = h_prev / h."""
        m0, m1 = self.x0_history[0], self.x0_history[1]
        r = (lam[1] - lam[2]) / h
        return base - alpha_t * phi * (m0 - m1) / (2.0 * r)

    def _third(self, base, h, lam, alpha_t, phi):
        """Third-order multistep; base already holds the D0 term."""
        m0, m1, m2 = self.x0_history[0], self.x0_history[1], self.x0_history[2]
        r0 = (lam[1] - lam[2]) / h
        r1 = (lam[2] - lam[3]) / h
        d1_0 = (m0 - m1) / r0
        d1_1 = (m1 - m2) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 x0'' (see the module docstring)
        return base + alpha_t * (phi / h + 1.0) * d1 - alpha_t * ((phi + h) / h**2 - 0.5) * d2


def _tables(schedule: NoiseSchedule, kappas) -> tuple:
    """(kappas, alphas, sigmas, lambdas), float64 [M], read-only; ValueError unless kappas is a
    non-empty strictly decreasing 1-D grid."""
    kappas = np.array(kappas, dtype=np.float64)
    if kappas.ndim != 1 or len(kappas) < 1 or np.any(np.diff(kappas) >= 0):
        raise ValueError("kappas must be a non-empty decreasing 1-D grid")
    tables = (kappas, schedule.alpha(kappas), schedule.sigma(kappas), schedule.lam(kappas))
    for t in tables:
        t.flags.writeable = False  # shared between solvers (_grid_tables)
    return tables


@lru_cache(maxsize=64)
def _grid_tables(schedule: NoiseSchedule, steps: int, spacing: str) -> tuple:
    """_tables of the schedule's `steps`-step grid: every forecast of a model builds a solver, and
    the grid's interpolations cost about as much as one plain step's control work."""
    return _tables(schedule, schedule.sampling_grid(steps, spacing))
