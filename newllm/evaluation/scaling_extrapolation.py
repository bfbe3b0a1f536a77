"""What the scaling fits predict beyond the data: PPL and the change for 2x data at target sizes, with intervals,
and a flag on every prediction no language model can reach (PPL below 1, or below the data's known optimum)."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from newllm.config.experiments import ScalingConfig
from newllm.evaluation.scaling_fits import ScalingFit, as_sizes


def extrapolation_table(fits: Mapping[str, ScalingFit], targets: Optional[Sequence[float]] = None,
                        optimum_ppl: Optional[float] = None) -> pd.DataFrame:
    """Predicted PPL per fit and target size, with bootstrap intervals, and the PPL change for 2x data there.

    ``fits`` maps a label to a fit; ``targets`` defaults to ``ScalingConfig().targets`` (5e5 ... 1e7 tokens).
    Columns: fit, tokens, ppl, ppl_low, ppl_high, change_2x, change_2x_low, change_2x_high (fractions, -0.22 = -22 %),
    note: "impossible: PPL below 1" or "impossible: below the known optimum X" where the prediction is (the fit's
    form cannot hold that far), else "". A refused fit gives NaN rows.
    """
    if not isinstance(fits, Mapping) or not fits:
        raise ValueError("extrapolation_table needs a non-empty mapping {label: fit}, e.g. {'power law': fit}")
    sizes = as_sizes(ScalingConfig().targets if targets is None else targets)
    frames = []
    for label, fit in fits.items():
        if not isinstance(fit, ScalingFit):
            raise ValueError(f"extrapolation_table: fits[{label!r}] is a {type(fit).__name__}, not a scaling fit")
        ppl_low, ppl_high = fit.predict_interval(sizes)
        change_low, change_high = fit.change_for_doubling_interval(sizes)
        frames.append(pd.DataFrame({
            "fit": label,
            "tokens": sizes,
            "ppl": fit.predict(sizes),
            "ppl_low": ppl_low,
            "ppl_high": ppl_high,
            "change_2x": fit.change_for_doubling(sizes),
            "change_2x_low": change_low,
            "change_2x_high": change_high,
        }))
    table = pd.concat(frames, ignore_index=True)
    table["note"] = [_impossible(ppl, optimum_ppl) for ppl in table["ppl"]]
    return table


def _impossible(ppl: float, optimum_ppl: Optional[float]) -> str:
    if not np.isfinite(ppl):
        return ""
    if ppl < 1.0:
        return "impossible: PPL below 1"
    if optimum_ppl is not None and ppl < optimum_ppl:
        return f"impossible: below the known optimum {optimum_ppl:.4g}"
    return ""
