"""TensorBoard scalars in a run folder (``<run>/tensorboard/``): ``tensorboard --logdir results/`` shows every run.

Written through ``torch.utils.tensorboard`` (the ``tensorboard`` package); each numeric, finite value of a history
row becomes the scalar ``<prefix>/<column>`` at its step. Runners log through the trainers' per-iteration and
per-epoch callbacks, so the trainers themselves know nothing of it.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Mapping, Optional, Union


class ScalarLog:
    """One TensorBoard event stream for a run; the writer starts on the first value logged."""

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder)
        self._writer: Optional[Any] = None

    def log(self, prefix: str, row: Mapping[str, Any], step: int) -> None:
        values = {key: float(value) for key, value in row.items()
                  if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)}
        if not values:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.folder))
        for key, value in values.items():
            self._writer.add_scalar(f"{prefix}/{key}", value, int(step))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
