"""Scaling-law fits of validation perplexity against training-set size, with bootstrap intervals.

Two fits (seed-spec 5.6):

- ``fit_power_law``: PPL = A * N^alpha by ordinary least squares on (ln N, ln PPL), the original's fit
  (scipy.stats.linregress; reproduces seed 003 and the 11-27 fits exactly).
- ``fit_saturating``: loss = E + B / N^beta with loss = ln PPL, so PPL flattens at exp(E). Fitted by minimising a
  Huber loss on log residuals (log(pred loss) - log(observed loss)) from a grid of starting points.

Several runs at one size (seeds) are averaged first (arithmetic mean of PPL). Every parameter gets a percentile
bootstrap interval: resample the sizes with replacement (``resample="points"``), or the runs within each size
(``resample="seeds"``). With the handful of sizes a scaling run has (3-5), these intervals are wide and rough:
they show how much the fit hinges on single points, not a calibrated 95 % coverage.

A fit needs more distinct sizes than it has parameters, or its quality measures mean nothing: at least 3 for the
power law (2 parameters; with 2 points R^2 is 1 by construction and no p-value exists) and 4 for the saturating fit
(3 parameters). With fewer, the fit is refused: a ``ScalingFitWarning`` is issued and the result has ``ok=False``,
a ``reason`` and NaN values.

Fits refuse the impossible. A perplexity is at least 1, and when the data's best achievable perplexity is known
(the built-in corpus's optimum), no amount of data beats it: ``fit_saturating(..., optimum_ppl=...)`` keeps its
floor exp(E) at or above that optimum, and ``extrapolation_table(..., optimum_ppl=...)`` flags (column ``note``)
every predicted PPL below 1 or below the optimum, instead of printing it as a forecast.

Pure numpy/scipy/pandas; no torch.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional, Sequence, Union

import numpy as np
import pandas as pd
from scipy import optimize, special, stats
from tqdm.auto import tqdm

from newllm.config.experiments import ScalingConfig

ArrayLike = Union[Sequence[float], np.ndarray, pd.Series]

POWER_LAW_MIN_SIZES = 3
SATURATING_MIN_SIZES = 4

# Box bounds for the saturating fit's optimiser (E, c = log excess loss at the middle size, beta): E >= 0 and
# beta > 0 are the model's constraints; the others only keep exp() finite (a loss is ln PPL <= ln vocab ~ 11).
_SATURATING_BOUNDS = ((0.0, 1e3), (-30.0, 10.0), (1e-6, 5.0))
# Starts as (E / smallest loss, beta): E from none to most of the loss, beta from slow to fast decay.
_START_GRID = tuple((fraction, beta) for fraction in (0.0, 0.3, 0.6, 0.9) for beta in (0.05, 0.15, 0.4, 1.0))
_BOOTSTRAP_GRID = ((0.0, 0.15), (0.6, 0.4))


class ScalingFitWarning(UserWarning):
    """A scaling fit was refused: too few distinct sizes for its parameters, or the optimiser failed."""


# --------------------------------------------------------------------------------------------- results

@dataclass(frozen=True, kw_only=True)
class ScalingFit:
    """Fields and methods shared by both fits. ``samples`` holds the bootstrap parameters, one row per resample."""

    n_points: int  # distinct sizes fitted
    ok: bool
    reason: str  # why the fit was refused; "" when ok
    ci: dict  # parameter name -> (low, high) bootstrap percentile interval
    confidence: float
    n_bootstrap_used: int  # resamples that entered the intervals (degenerate ones are skipped)
    samples: np.ndarray = field(repr=False, compare=False)

    PARAMS: ClassVar[tuple[str, ...]] = ()  # fitted parameters, the columns of ``samples``
    _EXTRA_FIELDS: ClassVar[tuple[str, ...]] = ()  # quality measures, reported by ``to_dict``
    KIND: ClassVar[str] = ""

    @staticmethod
    def _ppl(params: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """PPL at ``sizes`` for parameter rows ``params`` (shape (k, n_params)) -> shape (k, len(sizes))."""
        raise NotImplementedError

    def params(self) -> np.ndarray:
        """The fitted parameters in ``PARAMS`` order."""
        return np.array([getattr(self, name) for name in self.PARAMS], dtype=float)

    def predict(self, sizes: Union[float, ArrayLike]) -> Union[float, np.ndarray]:
        """Predicted PPL at ``sizes`` (a float for a scalar, else an array); NaN when the fit was refused."""
        scalar = np.ndim(sizes) == 0
        values = self._ppl(self.params()[None, :], as_sizes(sizes))[0]
        return float(values[0]) if scalar else values

    def predict_interval(self, sizes: Union[float, ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap percentile interval (low, high) of the predicted PPL at ``sizes``; NaN without resamples."""
        return self._interval(self._ppl(self.samples, as_sizes(sizes)))

    def change_for_doubling(self, sizes: Optional[Union[float, ArrayLike]] = None) -> Union[float, np.ndarray]:
        """Relative PPL change when the data doubles: PPL(2N) / PPL(N) - 1 (e.g. -0.22 for "-22 %")."""
        if sizes is None:
            raise ValueError(f"{type(self).__name__}.change_for_doubling needs the size N it starts from")
        n = as_sizes(sizes)
        values = self.predict(2 * n) / self.predict(n) - 1
        return float(values[0]) if np.ndim(sizes) == 0 else values

    def change_for_doubling_interval(self, sizes: Union[float, ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap percentile interval (low, high) of ``change_for_doubling`` at ``sizes``."""
        n = as_sizes(sizes)
        return self._interval(self._ppl(self.samples, 2 * n) / self._ppl(self.samples, n) - 1)

    def to_dict(self) -> dict:
        """JSON-ready summary (no bootstrap samples; NaN becomes None)."""
        out: dict = {"kind": self.KIND}
        for name in self.PARAMS + self._EXTRA_FIELDS + (
            "n_points", "ok", "reason", "confidence", "n_bootstrap_used"
        ):
            out[name] = _json_number(getattr(self, name))
        out["ci"] = {name: [_json_number(low), _json_number(high)] for name, (low, high) in self.ci.items()}
        return out

    def _interval(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _percentile_interval(values, self.confidence)


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise two-sided percentile interval of bootstrap ``values`` (rows = resamples); NaN without rows."""
    if len(values) == 0:
        return np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail], axis=0)
    return low, high


@dataclass(frozen=True, kw_only=True)
class PowerLawFit(ScalingFit):
    """PPL = A * N^alpha, ordinary least squares on (ln N, ln PPL).

    ``r2`` and ``p_value`` are linregress's (two-sided test of zero slope, n - 2 degrees of freedom).
    """

    alpha: float
    A: float
    r2: float
    p_value: float

    PARAMS: ClassVar[tuple[str, ...]] = ("alpha", "A")
    KIND: ClassVar[str] = "power_law"
    _EXTRA_FIELDS: ClassVar[tuple[str, ...]] = ("r2", "p_value")

    @staticmethod
    def _ppl(params: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        alpha, a = params[:, :1], params[:, 1:2]
        return a * np.power(sizes[None, :], alpha)

    def change_for_doubling(self, sizes: Optional[Union[float, ArrayLike]] = None) -> Union[float, np.ndarray]:
        """2^alpha - 1: the same at every N for a power law, so ``sizes`` may be left out."""
        if sizes is None:
            return float(2.0**self.alpha - 1.0)
        return super().change_for_doubling(sizes)

    def summary(self) -> str:
        """One readable line: the fit, its intervals and a caveat for few points."""
        if not self.ok:
            return f"power law not fitted: {self.reason}"
        return (
            f"PPL = {self.A:,.2f} * N^{self.alpha:.4f} (R^2 {self.r2:.4f}, p {self.p_value:.4f}, "
            f"{self.n_points} sizes); {_ci_text(self)}"
        )


@dataclass(frozen=True, kw_only=True)
class SaturatingFit(ScalingFit):
    """ln PPL = E + B / N^beta: the loss flattens at E, so PPL never falls below exp(E) however much data is added.

    ``rmse_log`` is the root mean square of the log residuals log(pred loss) - log(observed loss), a relative
    error of the fitted loss (0.01 means about 1 %).
    """

    E: float
    B: float
    beta: float
    rmse_log: float

    PARAMS: ClassVar[tuple[str, ...]] = ("E", "B", "beta")
    KIND: ClassVar[str] = "saturating"
    _EXTRA_FIELDS: ClassVar[tuple[str, ...]] = ("rmse_log",)

    @staticmethod
    def _ppl(params: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        e, b, beta = params[:, :1], params[:, 1:2], params[:, 2:3]
        return np.exp(e + b * np.power(sizes[None, :], -beta))

    @property
    def asymptotic_ppl(self) -> float:
        """exp(E): the PPL this fit says no amount of data gets below."""
        return float(math.exp(self.E))

    def summary(self) -> str:
        """One readable line: the fit, its intervals and a caveat for few points."""
        if not self.ok:
            return f"saturating fit not fitted: {self.reason}"
        return (
            f"ln PPL = {self.E:.4f} + {self.B:.4g} / N^{self.beta:.4f} (floor PPL {self.asymptotic_ppl:,.1f}, "
            f"rmse_log {self.rmse_log:.4f}, {self.n_points} sizes); {_ci_text(self)}"
        )


def _ci_text(fit: ScalingFit) -> str:
    if fit.n_bootstrap_used == 0:
        return "no bootstrap intervals"
    parts = [f"{name} [{low:.4g}, {high:.4g}]" for name, (low, high) in fit.ci.items()]
    text = f"{round(100 * fit.confidence)} % intervals from {fit.n_bootstrap_used} resamples: " + ", ".join(parts)
    if fit.n_points < 6:
        text += f" (only {fit.n_points} sizes: intervals are rough and wide)"
    return text


def _json_number(value):
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# ---------------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class _Runs:
    """Validated runs: one (size, ppl) pair per run, grouped by distinct size."""

    sizes: np.ndarray  # distinct sizes, ascending
    mean_ppl: np.ndarray  # mean PPL over the runs at each size
    groups: tuple  # per size: the PPL of its runs


def as_sizes(sizes: Union[float, ArrayLike]) -> np.ndarray:
    values = np.atleast_1d(np.asarray(sizes, dtype=float))
    if values.ndim != 1 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"sizes must be finite numbers > 0 (one value or a 1-D list); got {sizes!r}")
    return values


def _collect_runs(sizes: ArrayLike, ppl: ArrayLike, *, what: str, ppl_floor: float) -> _Runs:
    """Check the inputs and average the runs that share a size. PPL must exceed ``ppl_floor``."""
    size_values = np.asarray(sizes, dtype=float)
    ppl_values = np.asarray(ppl, dtype=float)
    if size_values.ndim != 1 or ppl_values.ndim != 1 or len(size_values) != len(ppl_values):
        raise ValueError(
            f"{what}: sizes and ppl must be 1-D and of equal length; got shapes {size_values.shape} and "
            f"{ppl_values.shape}"
        )
    bad_size = ~np.isfinite(size_values) | (size_values <= 0)
    if bad_size.any():
        raise ValueError(f"{what}: sizes must be finite and > 0; bad values {size_values[bad_size].tolist()}")
    bad_ppl = ~np.isfinite(ppl_values) | (ppl_values <= ppl_floor)
    if bad_ppl.any():
        raise ValueError(
            f"{what}: ppl must be finite and > {ppl_floor:g}; bad values {ppl_values[bad_ppl].tolist()} "
            "(drop failed runs before fitting)"
        )
    distinct, group_of = np.unique(size_values, return_inverse=True)
    groups = tuple(ppl_values[group_of == g] for g in range(len(distinct)))
    return _Runs(sizes=distinct, mean_ppl=np.array([g.mean() for g in groups]), groups=groups)


def aggregate_seeds(
    runs: pd.DataFrame, size_col: str = "tokens", value_col: str = "ppl", seed_col: Optional[str] = "seed"
) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1; NaN for one run) and count of ``value_col`` per size.

    Returns columns ``size_col``, ``{value_col}_mean``, ``{value_col}_std``, ``n_runs``, sorted by size.
    With ``seed_col`` set, a (size, seed) pair appearing twice is an error (a run recorded twice).
    """
    needed = [size_col, value_col] + ([seed_col] if seed_col is not None else [])
    missing = [name for name in needed if name not in runs.columns]
    if missing:
        hint = " (pass seed_col=None when runs have no seed column)" if seed_col in missing else ""
        raise ValueError(f"aggregate_seeds: missing column(s) {missing}; the table has {list(runs.columns)}{hint}")
    if seed_col is not None:
        repeated = runs.duplicated(subset=[size_col, seed_col], keep=False)
        if repeated.any():
            pairs = runs.loc[repeated, [size_col, seed_col]].drop_duplicates().values.tolist()
            raise ValueError(f"aggregate_seeds: ({size_col}, {seed_col}) pairs recorded more than once: {pairs}")
    grouped = runs.groupby(size_col, sort=True)[value_col]
    table = pd.DataFrame(
        {f"{value_col}_mean": grouped.mean(), f"{value_col}_std": grouped.std(ddof=1), "n_runs": grouped.size()}
    )
    return table.reset_index()


# ---------------------------------------------------------------------------------------------- fitting

def fit_power_law(
    sizes: ArrayLike, ppl: ArrayLike, config: Optional[ScalingConfig] = None, *, progress: bool = True
) -> PowerLawFit:
    """Fit PPL = A * N^alpha by least squares on (ln N, ln PPL), with bootstrap intervals for alpha and A.

    ``sizes`` are training-set sizes (tokens or samples), one per run; runs at one size are averaged.
    Refused (warning, ``ok=False``) with fewer than 3 distinct sizes.
    """
    config = config or ScalingConfig()
    runs = _collect_runs(sizes, ppl, what="fit_power_law", ppl_floor=0.0)
    if len(runs.sizes) < POWER_LAW_MIN_SIZES:
        return _refuse(PowerLawFit, runs, POWER_LAW_MIN_SIZES, config)
    line = stats.linregress(np.log(runs.sizes), np.log(runs.mean_ppl))
    samples = _bootstrap(runs, config, _power_law_params, n_params=2, progress=progress, desc="power-law bootstrap")
    return PowerLawFit(
        alpha=float(line.slope),
        A=float(math.exp(line.intercept)),
        r2=float(line.rvalue**2),
        p_value=float(line.pvalue),
        **_common_fields(PowerLawFit, runs, samples, config),
    )


def _power_law_params(sizes: np.ndarray, ppl: np.ndarray) -> np.ndarray:
    line = stats.linregress(np.log(sizes), np.log(ppl))
    return np.array([line.slope, math.exp(line.intercept)])


def fit_saturating(
    sizes: ArrayLike, ppl: ArrayLike, config: Optional[ScalingConfig] = None, *, progress: bool = True,
    optimum_ppl: Optional[float] = None,
) -> SaturatingFit:
    """Fit ln PPL = E + B / N^beta (E >= 0, B > 0, beta > 0), with bootstrap intervals for E, B and beta.

    Minimises the Huber loss (threshold ``config.huber_delta``) of log(pred loss) - log(observed loss) with
    SLSQP (box bounds) from a grid of starting points and keeps the best. Runs at one size are averaged.
    ``optimum_ppl`` (the data's known best PPL): the floor exp(E) is kept at or above it. Refused (warning,
    ``ok=False``) with fewer than 4 distinct sizes, or when an observed PPL is already below the optimum.
    """
    config = config or ScalingConfig()
    runs = _collect_runs(sizes, ppl, what="fit_saturating", ppl_floor=1.0)
    if len(runs.sizes) < SATURATING_MIN_SIZES:
        return _refuse(SaturatingFit, runs, SATURATING_MIN_SIZES, config)
    e_min = 0.0
    if optimum_ppl is not None:
        if not optimum_ppl >= 1.0:
            raise ValueError(f"optimum_ppl={optimum_ppl!r}: a perplexity is at least 1")
        if runs.mean_ppl.min() <= optimum_ppl:
            impossible = (f"an observed PPL ({runs.mean_ppl.min():.4g}) is at or below the data's known optimum "
                          f"({optimum_ppl:.4g}): check the evaluation before fitting")
            return _refuse(SaturatingFit, runs, SATURATING_MIN_SIZES, config, reason=impossible)
        e_min = math.log(optimum_ppl)
    best = _saturating_params(runs.sizes, runs.mean_ppl, config.huber_delta, _START_GRID, e_min=e_min)
    if best is None:
        failed = "the optimiser failed from every start"
        return _refuse(SaturatingFit, runs, SATURATING_MIN_SIZES, config, reason=failed)

    def fit_resample(sizes_: np.ndarray, ppl_: np.ndarray) -> Optional[np.ndarray]:
        # A resample is a perturbation of the data, so the full fit is a good start; two grid starts guard
        # against its basin having moved. Three starts instead of 16 keep 1,000 resamples to seconds.
        return _saturating_params(sizes_, ppl_, config.huber_delta, _BOOTSTRAP_GRID, warm_start=best, e_min=e_min)

    samples = _bootstrap(runs, config, fit_resample, n_params=3, progress=progress, desc="saturating bootstrap")
    e, b, beta = best
    return SaturatingFit(
        E=float(e), B=float(b), beta=float(beta),
        rmse_log=float(np.sqrt(np.mean(_log_residuals(best, runs.sizes, runs.mean_ppl) ** 2))),
        **_common_fields(SaturatingFit, runs, samples, config),
    )


def _log_residuals(params: np.ndarray, sizes: np.ndarray, ppl: np.ndarray) -> np.ndarray:
    e, b, beta = params
    return np.log(e + b * np.power(sizes, -beta)) - np.log(np.log(ppl))


def _saturating_params(
    sizes: np.ndarray,
    ppl: np.ndarray,
    delta: float,
    grid: tuple[tuple[float, float], ...],
    warm_start: Optional[np.ndarray] = None,
    e_min: float = 0.0,
) -> Optional[np.ndarray]:
    """Best (E, B, beta) over the starts, or None when no start reached a finite objective.

    ``grid`` holds (E as a fraction of the smallest loss, beta) pairs; B is then set to match the losses on
    average. The optimiser works on (E, c, beta) with c = ln B - beta * mean(ln N), the log of the excess loss
    at the middle size: centring decorrelates c from beta, which otherwise move together.
    """
    log_n = np.log(sizes)
    middle = float(log_n.mean())
    centred = log_n - middle
    loss = np.log(ppl)
    log_loss = np.log(loss)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        e, c, beta = theta
        excess = np.exp(c - beta * centred)  # B / N^beta
        pred = e + excess
        residual = np.log(pred) - log_loss
        # Divided by delta^2 so the objective is O(1) per point, a scale the optimiser's tolerances suit.
        value = special.huber(delta, residual).sum() / delta**2
        slope = np.clip(residual, -delta, delta) / delta**2 / pred  # d objective / d pred
        grad = np.array([slope.sum(), (slope * excess).sum(), -(slope * excess * centred).sum()])
        return float(value), grad

    bounds = ((e_min, _SATURATING_BOUNDS[0][1]),) + _SATURATING_BOUNDS[1:]
    if e_min >= loss.min():  # a resample whose best point beats the floor: nothing to fit
        return None
    starts = []
    for fraction, beta0 in grid:
        e0 = e_min + fraction * (loss.min() - e_min)
        starts.append((e0, float(np.mean(np.log(loss - e0) - beta0 * centred)), beta0))
    if warm_start is not None:
        e0, b0, beta0 = warm_start
        starts.append((e0, math.log(b0) - beta0 * middle, beta0))
    best_value, best_theta = math.inf, None
    for start in starts:
        start = np.clip(start, *zip(*bounds))
        # SLSQP rather than L-BFGS-B: on a busy machine L-BFGS-B's multithreaded BLAS calls made this 3-parameter
        # problem ~15x slower, and from this grid SLSQP reached the same optimum from every start.
        result = optimize.minimize(
            objective, start, jac=True, method="SLSQP", bounds=bounds,
            options={"ftol": 1e-12, "maxiter": 500},
        )
        if np.isfinite(result.fun) and result.fun < best_value:
            best_value, best_theta = result.fun, result.x
    if best_theta is None:
        return None
    e, c, beta = np.clip(best_theta, *zip(*bounds))  # no rounding excursion past the floor
    return np.array([e, math.exp(c + beta * middle), beta])


# -------------------------------------------------------------------------------------------- bootstrap

def _bootstrap(
    runs: _Runs,
    config: ScalingConfig,
    fit_params: Callable[[np.ndarray, np.ndarray], Optional[np.ndarray]],
    *,
    n_params: int,
    progress: bool,
    desc: str,
) -> np.ndarray:
    """Parameters refitted on ``config.n_bootstrap`` resamples, one row each; degenerate resamples are skipped."""
    if config.resample == "seeds":
        single = [float(size) for size, group in zip(runs.sizes, runs.groups) if len(group) < 2]
        if single:
            raise ValueError(
                f"resample='seeds' needs >= 2 runs at every size; sizes with one run: {single}. "
                "Use resample='points' or add seeds."
            )
    rng = np.random.default_rng(config.seed)
    rows = []
    for _ in tqdm(range(config.n_bootstrap), desc=desc, disable=not progress, leave=False):
        if config.resample == "points":
            picked = rng.integers(0, len(runs.sizes), size=len(runs.sizes))
            if len(np.unique(picked)) < n_params:  # too few distinct sizes to determine the parameters
                continue
            sizes, ppl = runs.sizes[picked], runs.mean_ppl[picked]
        else:
            sizes = runs.sizes
            ppl = np.array([rng.choice(group, size=len(group)).mean() for group in runs.groups])
        params = fit_params(sizes, ppl)
        if params is not None and np.all(np.isfinite(params)):
            rows.append(params)
    samples = np.array(rows, dtype=float).reshape(-1, n_params)
    samples.setflags(write=False)
    return samples


def _common_fields(cls: type, runs: _Runs, samples: np.ndarray, config: ScalingConfig) -> dict:
    low, high = _percentile_interval(samples, config.confidence)
    return dict(
        n_points=len(runs.sizes),
        ok=True,
        reason="",
        ci={name: (float(low[i]), float(high[i])) for i, name in enumerate(cls.PARAMS)},
        confidence=config.confidence,
        n_bootstrap_used=len(samples),
        samples=samples,
    )


def _refuse(cls: type, runs: _Runs, minimum: int, config: ScalingConfig, reason: Optional[str] = None) -> ScalingFit:
    """Warn and return a result of ``cls`` with ok=False and NaN values."""
    if reason is None:
        reason = (
            f"{len(runs.sizes)} distinct size(s) but {cls.KIND} needs at least {minimum} "
            f"(more points than its {len(cls.PARAMS)} parameters); add sizes before fitting"
        )
    warnings.warn(f"{cls.KIND} fit refused: {reason}", ScalingFitWarning, stacklevel=3)
    nan = float("nan")
    samples = np.empty((0, len(cls.PARAMS)))
    samples.setflags(write=False)
    return cls(
        **{name: nan for name in cls.PARAMS + cls._EXTRA_FIELDS},
        n_points=len(runs.sizes),
        ok=False,
        reason=reason,
        ci={name: (nan, nan) for name in cls.PARAMS},
        confidence=config.confidence,
        n_bootstrap_used=0,
        samples=samples,
    )
