"""Options models: the base every configuration model derives from, and durations.

A plugin's options are validated from its section of the YAML file by the model it declares,
so its error paths, bounds and secret handling read the same as the collector's own settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)

DURATION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
"""What a duration written as text looks like (`500ms`, `10s`, `5m`, `1h`, `2.5`)."""
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

MAX_DURATION = 7 * 86400.0
"""Longest duration any setting takes unless its field says less: a week."""


def parse_duration(value: Any) -> Any:
    """Accept `10`, `2.5`, `500ms`, `10s`, `5m`, `1h`; return seconds (pydantic checks > 0)."""
    if isinstance(value, str):
        match = DURATION_PATTERN.match(value)
        if not match:
            raise ValueError("a duration is a number of seconds or like 500ms, 10s, 5m, 1h")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


def _at_most_a_week(seconds: float) -> float:
    """Bound every duration: `1e308` or `99999999h` would make a timeout that never ends."""
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration is at most 7 days ({MAX_DURATION:g} s)")
    return seconds


Duration = Annotated[
    float, Field(gt=0), BeforeValidator(parse_duration), AfterValidator(_at_most_a_week)
]
"""A length of time in seconds, written in the file as a number or with a unit; finite, more
than zero and at most a week (a field may bound it tighter with `Field(le=...)`)."""


def is_secret(annotation: Any) -> bool:
    """Whether a field of this type is a secret (it may then be given as `<name>_file`)."""
    return annotation is SecretStr or SecretStr in get_args(annotation)


class Model(BaseModel):
    """Base of every configuration model: strict keys, and `<secret>_file` support.

    A secret field `token` may instead be given as `token_file: /run/secrets/influx`; the file's
    content (trailing newline stripped) becomes the secret. No number may be NaN or infinite
    (`.inf` in YAML): the daemon would wait, or count, forever.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, info in cls.model_fields.items():
            file_key = f"{name}_file"
            if file_key not in data or not is_secret(info.annotation):
                continue
            if name in data:
                raise ValueError(f"give either {name} or {file_key}, not both")
            data = dict(data)
            path = Path(str(data.pop(file_key))).expanduser()
            try:
                data[name] = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"{file_key}: cannot read {path}: {exc.strerror}") from exc
            except UnicodeDecodeError:  # from None: the cause holds bytes of the secret
                raise ValueError(f"{file_key}: {path} is not UTF-8 text") from None
        return data


class NoOptions(Model):
    """Options model of a plugin that takes none."""


def options_model_of(cls: type, generic_base: type) -> type[BaseModel] | None:
    """The options model `cls` names as the type parameter of `generic_base`
    (`class MyDriver(Driver[MyOptions])` -> `MyOptions`), or None if it names none here.

    Why: the model is then written once, and `self.options` is typed by it too.
    """
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = get_origin(base)
        if isinstance(origin, type) and issubclass(origin, generic_base):
            (model,) = get_args(base)
            if isinstance(model, type) and issubclass(model, BaseModel):
                return model
    return None
