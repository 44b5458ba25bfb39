"""Upper-level optimisers with box bounds on θ: Scaled Gradient Projection (default) and
projected Adam.

:class:`SGP` is the Scaled Gradient Projection method of Bonettini, Zanella and Zanni
(2009) for a deterministic (full-batch) objective with box constraints, as SPEC §5 asks:

- each parameter group is a *block* (ρ, the α_k, τ, ...) with bounds [lo, hi]; the block is
  handled in normalised coordinates u = (θ − lo)/w with w = hi − lo when both bounds are
  finite, else w = the block's largest initial magnitude (1 if it starts at 0), so step
  lengths are comparable across blocks whatever their units;
- projected step y = P_box(u − α_b·∇_u f) with a step length α_b *per block* (equivalently a
  diagonal scaling matrix), direction d = y − u;
- Armijo backtracking along d: f(u + λd) ≤ f_ref + γ·λ·∇fᵀd, λ ← β·λ (γ = 1e-4, β = 0.4),
  f_ref = f(u) (monotone, ``memory=1``) or the maximum of the last M values (non-monotone);
- step lengths by Barzilai–Borwein rules alternated by ABBmin: with s = Δu and z = Δ∇f of
  the block, BB1 = sᵀs/sᵀz, BB2 = sᵀz/zᵀz; if BB2/BB1 < τ_ABB take the smallest BB2 of the
  last 3 iterations and τ_ABB ← 0.9·τ_ABB, else BB1 and τ_ABB ← 1.1·τ_ABB (τ_ABB starts at
  0.5); α_b is kept in [1e-5, 1e3] and set to the upper bound when sᵀz ≤ 0.

Both optimisers subclass :class:`torch.optim.Optimizer`, so their state is saved and
restored by :mod:`stormfold.checkpoint` like any optimiser's.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from stormfold.errors import UserError


def _scale(group: dict) -> float:
    """Unit of the block's normalised coordinates (fixed when the optimiser is built)."""
    if group.get("scale") is not None:
        return float(group["scale"])
    lo, hi = group["lo"], group["hi"]
    if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
        return float(hi - lo)
    # A half-open box has no width: use the block's initial magnitude, so that a step size
    # means the same relative change as for a bounded block (1 when the block starts at 0).
    size = max((float(p.detach().abs().max()) for p in group["params"] if p.numel()),
               default=0.0)
    return size if size > 0 else 1.0


def _fix_scales(groups: list[dict]) -> None:
    for g in groups:
        g["scale"] = _scale(g)


def _as_groups(params: Iterable) -> list[dict]:
    groups = list(params)
    if not groups:
        raise UserError("the optimiser got no parameters to learn")
    return [g if isinstance(g, dict) else {"params": [g]} for g in groups]


class SGP(torch.optim.Optimizer):
    """Scaled Gradient Projection with per-block BB/ABBmin steps and Armijo backtracking.

    Parameters
    ----------
    params : iterable of dict
        Blocks: ``{"params": [tensor, ...], "lo": float, "hi": float, "name": str}``
        (a bare tensor is an unbounded block of its own).
    step_min, step_max : float
        Bounds of the step lengths α_b (normalised units).
    step_init : float, optional
        First step length of every block. Default: such that the first move of each block is
        at most ``first_move`` in normalised units (``first_move / max|∇_u f|``).
    gamma, beta : float
        Armijo sufficient-decrease parameter and backtracking factor.
    memory : int
        1 = monotone Armijo; M > 1 compares with the maximum of the last M values.
    abb_memory : int
        Number of past BB2 values ABBmin takes the minimum of.
    abb_tau : float
        Initial switching threshold τ_ABB.
    max_backtracks : int
        Line-search trials before the method declares that it cannot decrease f.
    first_move : float
        See ``step_init``.
    shared_step : bool
        One step length for all blocks (computed from all of θ in normalised coordinates)
        instead of one per block.
    tol, patience : float, int
        Stop (:attr:`converged`) when the projected step changes no normalised coordinate by
        more than ``tol``, or when ``patience`` accepted steps in a row change f by less than
        ``tol``·|f|.

    Notes
    -----
    ``step(closure)`` performs one outer iteration. The closure must zero the gradients,
    compute the loss, call ``backward()`` and return the loss; it is evaluated once per
    line-search trial (usually once per iteration). :attr:`converged` becomes True when the
    projected direction vanishes or the line search fails.
    """

    def __init__(self, params: Iterable, step_min: float = 1e-5, step_max: float = 1e3,
                 step_init: float | None = None, gamma: float = 1e-4, beta: float = 0.4,
                 memory: int = 1, abb_memory: int = 3, abb_tau: float = 0.5,
                 max_backtracks: int = 30, first_move: float = 0.05, shared_step: bool = False,
                 tol: float = 1e-9, patience: int = 5):
        if not 0 < step_min <= step_max:
            raise UserError(f"SGP: need 0 < step_min ≤ step_max, got {step_min}, {step_max}")
        if not (0 < gamma < 1 and 0 < beta < 1):
            raise UserError("SGP: Armijo gamma and beta must be in (0, 1)")
        if memory < 1 or abb_memory < 1:
            raise UserError("SGP: memory and abb_memory must be ≥ 1")
        defaults = dict(lo=-math.inf, hi=math.inf, name="", step=step_init, abb_tau=abb_tau,
                        bb2_memory=[])
        super().__init__(_as_groups(params), defaults)
        _fix_scales(self.param_groups)
        self.step_min, self.step_max = float(step_min), float(step_max)
        self.gamma, self.beta = float(gamma), float(beta)
        self.memory, self.abb_memory = int(memory), int(abb_memory)
        self.max_backtracks, self.first_move = int(max_backtracks), float(first_move)
        self.shared_step = bool(shared_step)
        self.tol = float(tol)
        self.patience = max(1, int(patience))
        for group in self.param_groups:
            group["bb2_memory"] = list(group["bb2_memory"])
            if not group["lo"] <= group["hi"]:
                raise UserError(f"SGP: block {group['name']!r} has lo > hi")

    # ------------------------------------------------------------------ helpers
    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def _global(self) -> dict:
        return self.state[self._params()[0]]

    @property
    def converged(self) -> bool:
        """True when the last iteration could not decrease the objective any further."""
        return bool(self._global.get("converged", False))

    @property
    def n_evaluations(self) -> int:
        """Number of objective (and gradient) evaluations so far."""
        return int(self._global.get("n_evals", 0))

    def _evaluate(self, closure: Callable[[], torch.Tensor]) -> float:
        with torch.enable_grad():
            loss = closure()
        self._global["n_evals"] = self.n_evaluations + 1
        value = float(loss)
        for p in self._params():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return value

    def _clip(self, value: float) -> float:
        return min(max(value, self.step_min), self.step_max)

    def _update_step(self, group: dict, ss: float, sz: float, zz: float) -> None:
        """ABBmin choice between BB1 = sᵀs/sᵀz and BB2 = sᵀz/zᵀz for one block."""
        if sz <= 0 or zz == 0:
            bb1 = bb2 = self.step_max
        else:
            bb1, bb2 = self._clip(ss / sz), self._clip(sz / zz)
        memory = (group["bb2_memory"] + [bb2])[-self.abb_memory:]
        group["bb2_memory"] = memory
        if bb2 / bb1 < group["abb_tau"]:
            group["step"] = self._clip(min(memory))
            group["abb_tau"] *= 0.9
        else:
            group["step"] = bb1
            group["abb_tau"] *= 1.1

    # ------------------------------------------------------------------ iteration
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> float:  # type: ignore[override]
        """One SGP iteration; returns the objective value at the new point."""
        params = self._params()
        g0 = self._global
        if "f" not in g0:
            for group in self.param_groups:
                for p in group["params"]:
                    p.clamp_(group["lo"], group["hi"])
            f = self._evaluate(closure)
            g0["f"], g0["f_history"] = f, [f]
            for p in params:
                self.state[p]["grad"] = p.grad.detach().clone()
            gmax = {id(g): max(float((self.state[p]["grad"] * _scale(g)).abs().max())
                               for p in g["params"]) for g in self.param_groups}
            if self.shared_step:
                top = max(gmax.values())
                gmax = {k: top for k in gmax}
            for group in self.param_groups:
                if group["step"] is None:
                    gm = gmax[id(group)]
                    group["step"] = self._clip(self.first_move / gm if gm > 0 else self.step_max)
        f = float(g0["f"])
        if self.converged:
            return f
        # Projected step per block and the directional derivative ∇fᵀd.
        start = {p: p.detach().clone() for p in params}
        direction = {}
        slope = 0.0
        for group in self.param_groups:
            s2 = _scale(group) ** 2
            for p in group["params"]:
                g = self.state[p]["grad"]
                trial = (p - group["step"] * s2 * g).clamp_(group["lo"], group["hi"])
                direction[p] = trial - p
                slope += float((g * direction[p]).sum())
        move = max(float((direction[p] / _scale(g)).abs().max()) for g in self.param_groups
                   for p in g["params"])
        if not slope < 0 or move <= self.tol:
            g0["converged"] = True
            return f
        f_ref = max(g0["f_history"][-self.memory:])
        lam = 1.0
        for _ in range(self.max_backtracks):
            for p in params:
                p.copy_(start[p] + lam * direction[p])
            f_new = self._evaluate(closure)
            if f_new <= f_ref + self.gamma * lam * slope:  # NaN fails and backtracks
                break
            lam *= self.beta
        else:
            for p in params:
                p.copy_(start[p])
            g0["converged"] = True
            return f
        # Barzilai–Borwein step lengths per block (or one for all), alternated by ABBmin.
        sums = []
        for group in self.param_groups:
            sc = _scale(group)
            ss = sz = zz = 0.0
            for p in group["params"]:
                s_u = (p - start[p]) / sc
                z_u = (p.grad - self.state[p]["grad"]) * sc
                ss += float((s_u * s_u).sum())
                sz += float((s_u * z_u).sum())
                zz += float((z_u * z_u).sum())
            sums.append((ss, sz, zz))
        if self.shared_step:
            total = tuple(map(sum, zip(*sums)))
            self._update_step(self.param_groups[0], *total)
            for group in self.param_groups[1:]:
                group.update(step=self.param_groups[0]["step"],
                             abb_tau=self.param_groups[0]["abb_tau"],
                             bb2_memory=list(self.param_groups[0]["bb2_memory"]))
        else:
            for group, (ss, sz, zz) in zip(self.param_groups, sums):
                self._update_step(group, ss, sz, zz)
        for p in params:
            self.state[p]["grad"] = p.grad.detach().clone()
        # BB steps alternate small and large decreases: stop only after `patience` stalls.
        stalled = abs(f - f_new) <= self.tol * abs(f)
        g0["stalls"] = int(g0.get("stalls", 0)) + 1 if stalled else 0
        if g0["stalls"] >= self.patience:
            g0["converged"] = True
        g0["f"] = f_new
        g0["f_history"] = (g0["f_history"] + [f_new])[-max(self.memory, 1):]
        return f_new


class ProjectedAdam(torch.optim.Adam):
    """Adam followed by clamping every parameter into its block's [lo, hi].

    Parameters
    ----------
    params : iterable of dict
        Blocks as for :class:`SGP`.
    lr : float
        Learning rate in normalised units: each block's rate is ``lr·(hi − lo)`` (``lr`` when
        a bound is infinite).
    **kwargs
        Passed to :class:`torch.optim.Adam`.
    """

    def __init__(self, params: Iterable, lr: float = 0.02, **kwargs):
        groups = []
        for g in _as_groups(params):
            g = dict(g)
            g.setdefault("lo", -math.inf)
            g.setdefault("hi", math.inf)
            g.setdefault("name", "")
            g["scale"] = _scale(g)
            g["lr"] = lr * g["scale"]
            groups.append(g)
        super().__init__(groups, lr=lr, **kwargs)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]
        """One Adam step, then the projection onto the box; returns the closure's loss."""
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.clamp_(group["lo"], group["hi"])
        return loss
