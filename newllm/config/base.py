"""ConfigBase: frozen, validated dataclass configs with a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

T = TypeVar("T", bound="ConfigBase")


def _fail(cls_name: str, name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{cls_name}.{name}={value!r} is not allowed: {allowed}")


class ConfigBase:
    """Shared validation and JSON helpers (mixed into frozen dataclasses)."""

    def _require(self, name: str, ok: bool, allowed: str) -> None:
        if not ok:
            _fail(type(self).__name__, name, getattr(self, name), allowed)

    def _positive_int(self, name: str, minimum: int = 1) -> None:
        value = getattr(self, name)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        self._require(name, ok, f"an integer >= {minimum}")

    def _optional_positive_int(self, name: str, minimum: int = 1) -> None:
        if getattr(self, name) is not None:
            self._positive_int(name, minimum)

    def _positive_float(self, name: str, allow_zero: bool = False) -> None:
        value = getattr(self, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= 0 if allow_zero else value > 0)
        self._require(name, ok, "a finite number " + (">= 0" if allow_zero else "> 0"))

    def _in_range(self, name: str, low: float, high: float) -> None:
        value = getattr(self, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
        self._require(name, ok, f"a number in [{low}, {high}]")

    def _choice(self, name: str, choices: tuple) -> None:
        self._require(name, getattr(self, name) in choices, "one of " + ", ".join(repr(c) for c in choices))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], data: dict) -> T:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}.from_dict needs a JSON object (dict), got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown key(s) {unknown}; allowed keys are {sorted(known)}"
            )
        values = dict(data)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in values and isinstance(values[f.name], list) and "tuple" in str(f.type):
                values[f.name] = tuple(values[f.name])
        return cls(**values)  # type: ignore[call-arg]

    def to_json(self, path: Optional[Union[str, Path]] = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            from newllm.utils.io import atomic_write_text

            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_json(cls: type[T], source: Union[str, Path]) -> T:
        """Read a config from a JSON string or a path to a JSON file."""
        text = str(source)
        looks_like_json = text.lstrip().startswith("{")
        if not looks_like_json:
            path = Path(text)
            if not path.is_file():
                raise ValueError(f"{cls.__name__}.from_json: no such file {str(path)!r} (pass a path or a JSON string)")
            text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{cls.__name__}.from_json: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                "fix the file or regenerate it with .to_json()"
            ) from None
        return cls.from_dict(data)
