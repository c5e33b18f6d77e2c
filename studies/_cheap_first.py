"""The `auto` sampler: measure cheap objectives of many candidates, train few.

A training costs minutes to hours; a candidate's latency, size or NPU coverage costs
seconds and needs no training. `CheapFirst` therefore keeps a *pool* of candidates whose
cheap objectives are measured but which are not trained, and before each training:

1. draws up to `cheap_per_training` new candidates, half uniformly from the space and
   half as one-parameter mutations of the trained front (where the front can move), and
   measures their cheap objectives (`cheap_fn`); candidates that break a cheap constraint
   are kept out of the pool (they can never be feasible);
2. fits one Gaussian process per expensive objective (scikit-learn's
   `GaussianProcessRegressor`, Matern 5/2 with one length scale per feature plus a noise
   term, hyperparameters by maximum marginal likelihood) on the trained candidates;
   parameters are encoded one-hot when categorical and as their rank in [0, 1] when
   numeric;
3. trains the pooled candidate with the highest *expected hypervolume improvement* over
   the trained front: its cheap objectives are known exactly, its expensive ones are
   integrated over the GP's posterior on fixed normal quantiles (deterministic
   quasi-Monte Carlo). In two objectives the improvement of every sample is computed at
   once from the front's staircase (numpy); in more, exactly by `_pareto.hypervolume`.

The first `startup` trainings (after any queued ones, such as the baseline) are random
draws: a GP on fewer points says little. The hypervolume's reference point is, per
objective, the worst value seen so far (cheap values include the pool's), so it needs no
table statistics a real study lacks, unless a `reference` is given: the region of
objective space that matters to the user, as BoTorch's qNEHVI takes one. The hypervolume
a replay scores is bounded by its reference point, and `vlmnas replay` passes the same
point (a study's constraints play that part in a search).

The class knows nothing of Optuna, tables or trials: `vlmnas replay` drives it over a
table's rows and counts the cheap reads; a search can drive it with real measurements.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from ._pareto import hypervolume, pareto_front

Params = dict[str, Any]
Draw = Callable[[random.Random], Params]  # one random candidate of the space
# a candidate's objectives in `directions` order, the expensive ones any value (unread),
# or None when it breaks a constraint (never trained)
Cheap = Callable[[Params], Sequence[float] | None]

# quantiles of N(0, 1) at which each expensive objective's posterior is evaluated
_QUANTILES = 32


@dataclass
class CheapFirst:
    """Chooses whom to train; see the module docstring.

    `directions[i]` is "maximize" or "minimize"; `cheap[i]` says whether objective i is
    known before training. `choices[p]` lists parameter p's values in a fixed order.
    """

    choices: Mapping[str, Sequence[Any]]
    directions: Sequence[str]
    cheap: Sequence[bool]
    seed: int = 0
    cheap_per_training: int = 20
    startup: int = 4
    reference: Sequence[float] | None = None  # in `directions`' terms; None: worst seen
    queued: list[Params] = field(default_factory=list)  # trained first, in order
    # Conditional spaces: a parameter missing from a candidate does not apply to it (its
    # key holds None). `complete(params, rng)` fills in or drops the conditional
    # parameters after a mutation, as the space's sampler would; None: every parameter
    # always applies (a table).
    complete: Callable[[Params, random.Random], Params] | None = None

    def __post_init__(self) -> None:
        if len(self.cheap) != len(self.directions):
            raise ValueError("cheap and directions differ in length")
        if all(self.cheap) or not any(self.cheap):
            raise ValueError("CheapFirst needs at least one cheap and one expensive objective")
        if self.cheap_per_training < 1:
            raise ValueError(f"cheap_per_training={self.cheap_per_training}; allowed >= 1")
        self._rng = random.Random(self.seed)
        self._numeric = {
            p: all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vs)
            for p, vs in self.choices.items()
        }
        self.pool: dict[Hashable, tuple[Params, tuple[float, ...]]] = {}
        self.trained: dict[Hashable, tuple[Params, tuple[float, ...]]] = {}
        self.infeasible: set[Hashable] = set()  # trained, but broke a constraint: off the front
        self.measured: set[Hashable] = set()  # cheap objectives read (pool, trained, infeasible)
        self.last_reason = ""

    # -- the loop -----------------------------------------------------------------------

    def propose(self, draw: Draw, cheap_fn: Cheap) -> Params | None:
        """The next candidate to train, or None when no untrained feasible one is left
        to be found. Measures up to `cheap_per_training` new candidates first."""
        if self.queued:
            params = self.queued.pop(0)
            self._measure(params, cheap_fn)
            self.last_reason = "queued"
            if self.key(params) not in self.trained:
                return params
        self._grow_pool(draw, cheap_fn)
        if not self.pool:
            return None
        if len(self.trained) < max(1, self.startup):
            key = self._rng.choice(sorted(self.pool, key=repr))
            self.last_reason = "random start"
            return self.pool[key][0]
        key, gain = self._best_by_ehvi()
        self.last_reason = f"expected hypervolume improvement {gain:.4g}"
        return self.pool[key][0]

    def tell(self, params: Params, values: Sequence[float], feasible: bool = True) -> None:
        """Record a trained candidate's objectives (all of them, cheap ones included).
        An infeasible one (it broke a constraint known only after training) informs the
        surrogates but is never on the front."""
        key = self.key(params)
        self.pool.pop(key, None)
        self.measured.add(key)
        self.trained[key] = (dict(params), tuple(float(v) for v in values))
        if not feasible:
            self.infeasible.add(key)

    def forget(self, params: Params) -> None:
        """A candidate whose training failed: out of the pool, never proposed again."""
        key = self.key(params)
        self.pool.pop(key, None)
        self.measured.add(key)

    def key(self, params: Params) -> Hashable:
        return tuple(params.get(p) for p in self.choices)

    # -- cheap measurements -------------------------------------------------------------

    def _measure(self, params: Params, cheap_fn: Cheap) -> bool:
        key = self.key(params)
        if key in self.measured:
            return key in self.pool or key in self.trained
        self.measured.add(key)
        values = cheap_fn(params)
        if values is None:
            return False
        self.pool[key] = (dict(params), tuple(float(v) for v in values))
        return True

    def _grow_pool(self, draw: Draw, cheap_fn: Cheap) -> None:
        front = self._front_params()
        new = 0
        for _ in range(self.cheap_per_training * 10):  # a small space runs out of new ones
            if new >= self.cheap_per_training:
                break
            if front and new % 2 == 1:
                params = self._mutate(self._rng.choice(front))
            else:
                params = draw(self._rng)
            if self.key(params) in self.measured:
                continue
            new += 1
            self._measure(params, cheap_fn)

    def _mutate(self, params: Params) -> Params:
        out = dict(params)
        name = self._rng.choice([p for p, vs in self.choices.items() if len(vs) > 1] or [""])
        if name:
            out[name] = self._rng.choice([v for v in self.choices[name] if v != params.get(name)])
        return out if self.complete is None else self.complete(out, self._rng)

    def _front_params(self) -> list[Params]:
        items = [v for k, v in self.trained.items() if k not in self.infeasible]
        front = pareto_front([v for _, v in items], self.directions)
        return [items[i][0] for i in front]

    # -- the surrogate and the acquisition ----------------------------------------------

    def encode(self, params: Params) -> list[float]:
        """Features: rank in [0, 1] for a numeric parameter, one-hot for a categorical.
        A parameter that does not apply to the candidate: -0.5 (numeric, away from every
        rank) or all zeros (categorical)."""
        out: list[float] = []
        for p, vs in self.choices.items():
            value = params.get(p)
            if self._numeric[p]:
                order = sorted(vs)
                out.append(-0.5 if value is None else order.index(value) / max(1, len(order) - 1))
            else:
                out.extend(1.0 if value == v else 0.0 for v in vs)
        return out

    def _best_by_ehvi(self) -> tuple[Hashable, float]:
        keys = sorted(self.pool, key=repr)
        trained = list(self.trained.values())
        x_train = np.array([self.encode(p) for p, _ in trained])
        x_pool = np.array([self.encode(self.pool[k][0]) for k in keys])
        expensive = [i for i, c in enumerate(self.cheap) if not c]
        cheap = [i for i, c in enumerate(self.cheap) if c]
        # candidates' objective samples: (pool, quantiles, objectives), minimisation form
        flip = np.array([-1.0 if d == "maximize" else 1.0 for d in self.directions])
        samples = np.empty((len(keys), _QUANTILES, len(self.directions)))
        z = norm.ppf((np.arange(_QUANTILES) + 0.5) / _QUANTILES)
        for i in expensive:
            mu, sd = _gp_predict(x_train, np.array([v[i] for _, v in trained]), x_pool)
            samples[:, :, i] = mu[:, None] + sd[:, None] * z[None, :]
        for i in cheap:
            samples[:, :, i] = np.array([self.pool[k][1][i] for k in keys])[:, None]
        samples *= flip
        feasible = [v for k, (_, v) in self.trained.items() if k not in self.infeasible]
        front = np.array(feasible, dtype=float).reshape(-1, len(flip)) * flip
        front = front[pareto_front(front.tolist(), ["minimize"] * len(flip))]
        pooled = np.array([v for _, v in self.pool.values()]) * flip
        pooled[:, expensive] = np.nan  # not read
        if self.reference is not None:
            ref = np.asarray(self.reference, dtype=float) * flip
        else:
            seen = np.array([v for _, v in trained]) * flip
            worst = np.nanmax(np.vstack([seen, pooled]), axis=0)
            ref = worst + 1e-9 * (1 + np.abs(worst))
        gain = _mean_improvement(front, samples, ref)
        best = int(np.argmax(gain))
        return keys[best], float(gain[best])


def _gp_predict(x: np.ndarray, y: np.ndarray, x_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of a GP fit on (x, y), at x_new."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    dims = x.shape[1]
    kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(
        length_scale=np.ones(dims), length_scale_bounds=(5e-2, 2e1), nu=2.5
    ) + WhiteKernel(1e-2, (1e-6, 1e0))
    gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=0, random_state=0)
    with warnings.catch_warnings():  # a bound reached is not an error here
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(x, y)
    mu, sd = gp.predict(x_new, return_std=True)
    return np.asarray(mu), np.maximum(np.asarray(sd), 1e-12)


def _mean_improvement(front: np.ndarray, samples: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Mean over each candidate's samples of the hypervolume it adds to `front` (all in
    minimisation form, bounded by `ref`)."""
    if front.shape[1] == 2:
        return (
            _improvement_2d(front, samples.reshape(-1, 2), ref)
            .reshape(samples.shape[:2])
            .mean(axis=1)
        )
    base = hypervolume(front.tolist(), ["minimize"] * front.shape[1], ref.tolist())
    out = np.empty(samples.shape[0])
    for c, cand in enumerate(samples):
        out[c] = np.mean(
            [
                hypervolume([*front.tolist(), s.tolist()], ["minimize"] * len(ref), ref.tolist())
                - base
                for s in cand
            ]
        )
    return out


def _improvement_2d(front: np.ndarray, points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Hypervolume each of `points` adds to a 2-objective `front` (minimisation).

    The front's dominated region is a staircase: above x it reaches down to height
    s(x) = min(ref_y, min{f_y : f_x <= x}), a step function with breaks at the front's x.
    A point (px, py) adds the integral over x in [px, ref_x] of max(0, s(x) - py).
    """
    order = np.argsort(front[:, 0])
    fx, fy = front[order, 0], np.minimum.accumulate(front[order, 1])
    edges = np.concatenate([[-math.inf], fx, [ref[0]]])  # step j spans edges[j]..edges[j+1]
    heights = np.concatenate([[ref[1]], np.minimum(fy, ref[1])])
    lo = np.maximum(edges[None, :-1], points[:, :1])
    hi = np.minimum(edges[None, 1:], ref[0])
    width = np.clip(hi - lo, 0.0, None)
    return (width * np.clip(heights[None, :] - points[:, 1:2], 0.0, None)).sum(axis=1)
