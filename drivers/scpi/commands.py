"""Declarative command tables: an instrument's commands written once, read like a table.

In the spirit of PyMeasure's `Instrument.control(...)`: each command of an instrument is one
`Command` (how to set it, how to query it, how to check and parse the value), and a dialect is a
`CommandTable` mapping our names (`center_nm`, `single_sweep`) to that dialect's commands. The
driver speaks only our names, so two vendors' dialects sit behind one API; no command string
is built anywhere else.

    AQ6370 = CommandTable("Yokogawa AQ6370", {
        "center_nm": control(":SENSe:WAVelength:CENTer?", ":SENSe:WAVelength:CENTer {value:.4f}NM",
                             parse=scaled(1e9), validate=in_range(600, 1700, "nm")),
        "single_sweep": action(":INITiate", slow=True),
        "trace_y": measurement(":TRACe:Y? TRA"),
    })

Templates are `str.format` strings: a setting gets its (validated) value as `{value}`, and any
command may take further named parameters (`":TRACe:Y? {trace}"`, passed as keywords).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from string import Formatter
from typing import Any

from qkdtel.sdk import Malformed

Parser = Callable[[str], Any]
Validator = Callable[[Any], Any]


@dataclass(frozen=True)
class Command:
    """One entry of a command table.

    `write` / `query` are templates (None when the command cannot be set / queried). `parse`
    turns the answer text into a value and raises ValueError on nonsense; `validate` checks a
    value before it is sent and may translate it (our name -> the instrument's token). `check`:
    read the instrument's error queue after sending it (every command that can fail). `slow`:
    it starts a long operation (a sweep, an acquisition) that the caller then waits for with
    `Job.wait_complete` or `Job.wait_until` (never a sleep); their timeouts name it.
    """

    write: str | None = None
    query: str | None = None
    parse: Parser = str.strip
    validate: Validator | None = None
    check: bool = True
    slow: bool = False
    doc: str = ""

    def render_write(self, name: str, value: Any = None, **params: Any) -> str:
        """The command text that sets `value` (validated first)."""
        if self.write is None:
            raise ValueError(f"{name} cannot be set, only queried")
        if self.validate is not None and value is not None:
            try:
                value = self.validate(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from exc
        return _render(name, self.write, value=value, **params)

    def render_query(self, name: str, **params: Any) -> str:
        """The query text."""
        if self.query is None:
            raise ValueError(f"{name} cannot be queried, only set")
        return _render(name, self.query, **params)

    def parse_answer(self, name: str, text: str, where: str) -> Any:
        """The parsed answer; Malformed names the command and shows the answer."""
        try:
            return self.parse(text)
        except (ValueError, KeyError, IndexError) as exc:
            raise Malformed(f"{where}: answer to {name} ({text.strip()[:60]!r}): {exc}") from exc


@cache
def _fields(template: str) -> frozenset[str]:
    """The named fields of a command template (parsed once per template)."""
    return frozenset(f for _, f, _, _ in Formatter().parse(template) if f)


def _render(name: str, template: str, **params: Any) -> str:
    wanted = _fields(template)
    if not wanted:
        return template.format()
    missing = sorted(wanted - {k for k, v in params.items() if v is not None})
    if missing:
        raise ValueError(f"{name}: command {template!r} needs {', '.join(missing)}")
    return template.format(**params)


def control(
    query: str,
    write: str,
    *,
    parse: Parser = float,
    validate: Validator | None = None,
    doc: str = "",
) -> Command:
    """A setting that can be written and read back."""
    return Command(write=write, query=query, parse=parse, validate=validate, doc=doc)


def setting(write: str, *, validate: Validator | None = None, doc: str = "") -> Command:
    """A setting that can only be written."""
    return Command(write=write, validate=validate, doc=doc)


def action(write: str, *, slow: bool = False, check: bool = True, doc: str = "") -> Command:
    """A command without a value (start a sweep, abort, clear)."""
    return Command(write=write, slow=slow, check=check, doc=doc)


def measurement(query: str, *, parse: Parser = str.strip, doc: str = "") -> Command:
    """A read-only query."""
    return Command(query=query, parse=parse, doc=doc)


@dataclass(frozen=True)
class CommandTable(Mapping[str, Command]):
    """A dialect: our command names -> that instrument's `Command`s."""

    name: str
    commands: Mapping[str, Command] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Command:
        try:
            return self.commands[key]
        except KeyError as exc:
            known = ", ".join(sorted(self.commands))
            raise KeyError(f"{self.name} has no command {key!r} (it has: {known})") from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self.commands)

    def __len__(self) -> int:
        return len(self.commands)

    def extend(self, name: str, **commands: Command) -> CommandTable:
        """A new table: this one with `commands` added or replaced (a model variant)."""
        return CommandTable(name, {**self.commands, **commands})


# -- parsers ----------------------------------------------------------------------------------


def scaled(factor: float) -> Parser:
    """A number times `factor` (e.g. metres -> nanometres: `scaled(1e9)`)."""

    def parse(text: str) -> float:
        return float(text) * factor

    return parse


def integer(text: str) -> int:
    """An integer answer, tolerating `+5` and `5.0` (some firmware answers NR2 for counts)."""
    value = float(text)
    if value != int(value):
        raise ValueError("expected an integer")
    return int(value)


def error_entry(text: str) -> tuple[int, str]:
    """A `SYSTem:ERRor?` answer `<code>,"<message>"` -> (code, message)."""
    code, _, message = text.strip().partition(",")
    return int(code), message.strip().strip('"')


# -- validators -------------------------------------------------------------------------------


def in_range(low: float, high: float, unit: str = "") -> Validator:
    """Accept a number in [low, high]."""
    suffix = f" {unit}" if unit else ""

    def validate(value: Any) -> float:
        number = float(value)
        if not low <= number <= high:
            raise ValueError(f"{number:g}{suffix} is outside {low:g}..{high:g}{suffix}")
        return number

    return validate


def one_of(tokens: Mapping[Any, str]) -> Validator:
    """Accept one of our values and translate it to the instrument's token."""

    def validate(value: Any) -> str:
        if value not in tokens:
            choices = ", ".join(str(k) for k in tokens)
            raise ValueError(f"{value!r} is not one of {choices}")
        return tokens[value]

    return validate
