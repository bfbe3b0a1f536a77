"""Run folders: everything a run produces lives under ``results/<experiment>/<run-name>/``.

A run folder holds ``config.json`` (every setting, plus what was resolved at run time: dataset actually used,
device, embedding), metrics tables as CSV (appended row by row, so an interrupted sweep keeps what it finished), and
plots as PNG. Names follow the original's pattern where it had one (``new_llm_wikitext_ctx512_layers12_int8``) and an
existing run is never overwritten: a second run with the same name gets ``_2``, ``_3``, ...

A run folder can have a mirror (``mirror_dir``, or ``$NEWLLM_MIRROR_DIR``): on Colab with Google Drive mounted the
run is written to the VM's local disk, where checkpoints are written and renamed at disk speed, and ``sync()`` copies
what changed to ``<mirror_dir>/<experiment>/<name>/`` (the trainers' runners call it after every epoch and at the
end). Each file goes to the mirror whole, as a temporary file renamed into place, never appended to: files appended
on a Drive mount can read as 0 bytes for a long while (googlecolab/colabtools#2607). A resume on a fresh VM whose
local folder is gone starts from the mirror's copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import pandas as pd

from newllm.utils.io import atomic_write_json, atomic_write_text, pid_alive
from newllm.utils.scalars import ScalarLog

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MIRROR_DIR_ENV = "NEWLLM_MIRROR_DIR"


MAX_NAME_LENGTH = 120  # folder names: well under the 255 bytes file systems allow, with room for "_2" and files


def safe_name(name: str) -> str:
    """A folder-safe version of ``name`` (letters, digits, '.', '_' and '-')."""
    if not isinstance(name, str):
        raise ValueError(f"run/experiment name {name!r} must be a string (papermill: -p run_name my_run)")
    cleaned = _SAFE.sub("_", name.strip()).strip("._")
    if not cleaned:
        raise ValueError(f"run/experiment name {name!r} has no usable characters (use letters, digits, '_', '-')")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise ValueError(f"run/experiment name of {len(cleaned)} characters is too long: at most {MAX_NAME_LENGTH}")
    return cleaned


def original_run_name(ctx_dim: int, layers: int, quantization: str = "none", prefix: str = "new_llm_wikitext") -> str:
    """The original's naming pattern: ``new_llm_wikitext_ctx{D}_layers{L}[_int8]``."""
    suffix = "" if quantization in ("none", "", None) else f"_{quantization}"
    return f"{prefix}_ctx{ctx_dim}_layers{layers}{suffix}"


@dataclass
class RunFolder:
    """One run's folder and its files."""

    path: Path
    experiment: str
    name: str
    created: float = field(default_factory=time.time)
    mirror: Optional[Path] = None  # a second copy kept up to date by sync() (e.g. on Google Drive)

    @classmethod
    def create(
        cls, experiment: str, name: Optional[str] = None, results_dir: Union[str, Path] = "results", resume: bool = False,
        mirror_dir: Optional[Union[str, Path]] = None,
    ) -> "RunFolder":
        """Make a new run folder (never reusing an existing one unless ``resume`` names it explicitly).

        ``mirror_dir`` (default ``$NEWLLM_MIRROR_DIR``, unset: none): where :meth:`sync` keeps a copy."""
        experiment = safe_name(experiment)
        base = safe_name(name or time.strftime("run_%Y%m%d_%H%M%S"))
        root = Path(results_dir) / experiment
        mirror_root = mirror_dir if mirror_dir is not None else os.environ.get(MIRROR_DIR_ENV) or None
        mirror_root = Path(mirror_root).expanduser() / experiment if mirror_root else None
        if resume:
            path = root / base
            mirrored = mirror_root / base if mirror_root is not None else None
            if not path.is_dir() and mirrored is not None and mirrored.is_dir():
                shutil.copytree(mirrored, path)  # a fresh machine: continue from the mirror's copy
            if not path.is_dir():
                searched = str(path) if mirrored is None else f"{path} (nor the mirror {mirrored})"
                raise ValueError(f"cannot resume run {base!r}: {searched} does not exist (omit resume to start a new run)")
            return cls(path, experiment, base, mirror=mirrored)
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=root):
                pass
        except OSError as error:  # found now, before anything trains, not when the first result is written
            raise ValueError(f"results folder {root} is not writable ({error.strerror or error}): pass another "
                             "results_dir or set $NEWLLM_RESULTS_DIR") from None
        candidate, counter = base, 1
        while True:
            path = root / candidate
            taken = mirror_root is not None and (mirror_root / candidate).exists()
            try:
                if taken:  # a run of that name lives on the mirror (an earlier machine): never overwrite it
                    raise FileExistsError(candidate)
                path.mkdir()  # atomic claim: two processes never get the same folder
                return cls(path, experiment, candidate,
                           mirror=mirror_root / candidate if mirror_root is not None else None)
            except FileExistsError:
                counter += 1
                candidate = f"{base}_{counter}"

    def sync(self) -> int:
        """Copy every file that is new or changed since the last sync to the mirror (none: nothing to do); each
        file is written there whole under a temporary name and renamed into place. Returns how many were copied."""
        if self.mirror is None:
            return 0
        copied = 0
        for source in sorted(p for p in self.path.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
            target = self.mirror / source.relative_to(self.path)
            stat = source.stat()
            if target.is_file() and target.stat().st_size == stat.st_size and target.stat().st_mtime >= stat.st_mtime:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(target.name + ".tmp")
            shutil.copy2(source, staging)
            os.replace(staging, target)
            copied += 1
        return copied

    def file(self, name: str) -> Path:
        return self.path / name

    def scalars(self) -> ScalarLog:
        """The run's TensorBoard scalars (``<run>/tensorboard/``)."""
        return ScalarLog(self.file("tensorboard"))

    def record_settings(self, settings: Mapping[str, Any], may_change: Sequence[str] = ()) -> None:
        """Write the run's settings to config.json (``settings``), or, when the folder already records some (a
        resumed run), check that they are the same: a run folder holds the results of one set of settings only.
        Keys (dotted paths, e.g. ``phase2.epochs``) in ``may_change`` may differ; any other difference raises
        ValueError naming the keys and the two ways on."""
        current = _flatten(settings)
        config = self.read_config() if self.file("config.json").is_file() else {}
        if "settings" in config:
            recorded = _flatten(config["settings"])
            differing = sorted(k for k in set(recorded) | set(current)
                               if k not in may_change and recorded.get(k, _MISSING) != current.get(k, _MISSING))
            if differing:
                changes = "; ".join(f"{k}: {recorded.get(k, '(absent)')!r} -> {current.get(k, '(absent)')!r}"
                                    for k in differing[:8])
                raise ValueError(
                    f"run {self.name!r} ({self.path}) was made with other settings ({changes}"
                    f"{'; ...' if len(differing) > 8 else ''}). Its results would be mixed with these: start a new "
                    "run (another run_name, or no resume), or resume with the recorded settings (pass none of those "
                    "parameters)."
                )
        config["settings"] = dict(settings)
        atomic_write_json(self.file("config.json"), config)

    @contextmanager
    def lock(self):
        """Hold the run folder for this process: a second process (resuming the same run) gets a clear error
        instead of training the same sizes twice. A lock left by a dead process on this machine is taken over."""
        path = self.file(".lock")
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        while True:
            try:
                with open(path, "x", encoding="utf-8") as handle:
                    json.dump(owner, handle)
                break
            except FileExistsError:
                holder = _read_lock(path)
                if holder and holder.get("host") == owner["host"] and not pid_alive(int(holder.get("pid", -1))):
                    warnings.warn(f"run {self.name!r}: taking over the lock of process {holder.get('pid')}, which "
                                  "is gone", RuntimeWarning, stacklevel=3)
                    path.unlink(missing_ok=True)
                    continue
                raise RuntimeError(
                    f"run {self.name!r} ({self.path}) is in use by process {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}; wait for it to finish, or start another run_name. If no such "
                    f"process runs, delete {path}."
                ) from None
        try:
            yield self
        finally:
            path.unlink(missing_ok=True)

    def write_config(self, **sections: Any) -> Path:
        """config.json: each section a config object (with ``to_dict``) or a plain JSON-able value."""
        payload = {key: (value.to_dict() if hasattr(value, "to_dict") else value) for key, value in sections.items()}
        path = self.file("config.json")
        atomic_write_json(path, payload)
        return path

    def read_config(self) -> dict:
        return json.loads(self.file("config.json").read_text(encoding="utf-8"))

    def append_row(self, table: str, row: Mapping[str, Any]) -> Path:
        """Append one row to ``<table>.csv`` (rewritten atomically, so a crash never leaves a half row)."""
        path = self.file(f"{table}.csv")
        new = pd.DataFrame([dict(row)])
        frame = pd.concat([pd.read_csv(path), new], ignore_index=True) if path.exists() else new
        atomic_write_text(path, frame.to_csv(index=False))
        return path

    def read_table(self, table: str) -> pd.DataFrame:
        path = self.file(f"{table}.csv")
        return pd.read_csv(path) if path.exists() else pd.DataFrame()

    def write_table(self, table: str, frame: pd.DataFrame) -> Path:
        path = self.file(f"{table}.csv")
        atomic_write_text(path, frame.to_csv(index=False))
        return path

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.file(name if name.endswith(".json") else f"{name}.json")
        atomic_write_json(path, obj)
        return path

    def save_figure(self, figure: Any, name: str) -> Path:
        """Save a matplotlib figure as PNG atomically."""
        from newllm.utils.io import atomic_path

        path = self.file(name if name.endswith(".png") else f"{name}.png")
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        return path


_MISSING = object()


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}

