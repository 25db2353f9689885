"""Building blocks of the configuration: errors, secrets from the environment, durations, the strict base model."""
from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic_core import core_schema

MAIN_FILE = "switchboard.yaml"


class ConfigError(Exception):
    """One or more problems in the operator's configuration, each naming the file, the key path and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Secret:
    """A value that comes from the environment and is never printed."""

    __slots__ = ("env", "_value", "defaulted")

    def __init__(self, env: str, value: str):
        self.env = env
        self._value = value
        self.defaulted = False  # the variable was not set: the configuration's default is used

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret($env:{self.env})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.env == self.env and other._value == self._value

    def __hash__(self) -> int:
        return hash((self.env, self._value))

    @classmethod
    def _validate(cls, value: Any) -> "Secret":
        if isinstance(value, Secret):
            return value
        if isinstance(value, dict) and "$env" in value:
            unknown = set(value) - {"$env", "default"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)} in a secret; use {{$env: NAME, default: ...}}")
            name = value["$env"]
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                # The value is not echoed: an operator may have pasted the secret itself here.
                raise ValueError("$env must be the name of an environment variable (letters, digits, _)")
            resolved = os.environ.get(name)
            if resolved is None:
                if "default" not in value:
                    raise ValueError(f"environment variable {name} is not set; export it or give a default")
                default = value["default"]
                if not isinstance(default, (str, int)) or isinstance(default, bool) or str(default) == "":
                    # `default:` with nothing after it is null, which would become the text "None"
                    raise ValueError(f"environment variable {name} is not set and its default is empty or not text; "
                                     "export it, or give a non-empty default")
                secret = cls(name, str(default))
                secret.defaulted = True
                return secret
            if resolved == "":
                raise ValueError(f"environment variable {name} is set but empty; give it a value")
            return cls(name, resolved)
        raise ValueError("secrets come from the environment only: write {$env: VARIABLE_NAME}")

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate, serialization=core_schema.plain_serializer_function_ser_schema(lambda s: {"$env": s.env})
        )


_DURATION = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


def parse_duration(value: Any) -> Any:
    """'90s', '15m', '72h', '2d', '1h30m' or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not abs(value) <= MAX_DURATION_DAYS * 86400:  # also NaN and infinity
            raise ValueError(f"{value!r} seconds is longer than any duration Switchboard uses "
                             f"(at most {MAX_DURATION_DAYS}d)")
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match and any(match.groups()):
            d, h, m, s = (int(g or 0) for g in match.groups())
            try:
                return timedelta(days=d, hours=h, minutes=m, seconds=s)
            except OverflowError:
                pass  # reported below as too long
    if isinstance(value, timedelta) or (isinstance(value, str) and _DURATION.match(value)):
        raise ValueError(f"{value!r} is longer than any duration Switchboard uses (at most {MAX_DURATION_DAYS}d)")
    raise ValueError(f"not a duration: {value!r}; write e.g. 90s, 15m, 72h or 2d")


# SLA targets, windows and timeouts are hours to weeks; a deadline years away is a typo, and the business-hours
# arithmetic would walk that many days of calendar.
MAX_DURATION_DAYS = 366


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    if value > timedelta(days=MAX_DURATION_DAYS):
        raise ValueError(f"at most {MAX_DURATION_DAYS}d: a longer one is a typo")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_positive)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
