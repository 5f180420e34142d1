"""Reading the files the ``hostgate log``/``ima``/``policy`` commands are given: boot logs and IMA
lists (read bounded, so the parser reports an oversized one; a file of another kind is named),
quoted PCR values (JSON or YAML), and the flags that name the PCR values and the replay quirks
allowed with them."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from services.errors import ConfigError, ExitCode
from services.tpm import ima
from services.tpm.algorithms import alg_by_name
from services.tpm.errors import MalformedInput, TpmError
from services.tpm.eventlog import EventLog, parse_event_log
from services.tpm.filetype import IMA_LIST, guess_file_type
from services.tpm.limits import DEFAULT_LIMITS


def read_log_file(path: Path, max_bytes: int = DEFAULT_LIMITS.max_log_bytes) -> bytes:
    """Read at most ``max_bytes + 1`` bytes of ``path`` (the parser reports the excess): a boot
    log, or an IMA list with the IMA parser's limit."""
    try:
        with path.open("rb") as fh:
            return fh.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


class NotABootLog(TpmError):
    """A file given where a TCG boot event log was expected is something else (an IMA list, an
    image, JSON...); the parser's own error is its ``__cause__``."""

    exit_code = ExitCode.BAD_INPUT


def parse_boot_log_file(path: Path) -> EventLog:
    """Parse ``path`` as a TCG boot event log (untrusted until replayed against a quote). A file
    that does not parse and looks like another kind of file raises :class:`NotABootLog`
    naming that kind, rather than the parser's complaint about a field it never had."""
    data = read_log_file(path)
    try:
        return parse_event_log(data)
    except MalformedInput as exc:
        kind = guess_file_type(data)
        if kind is None:
            raise
        raise NotABootLog(f"{path} is not a TCG boot event log: it looks like {kind}") from exc


class NotAnImaList(TpmError):
    """A file given where a Linux IMA measurement list was expected is something else (a boot
    log, an image, JSON...); the parser's own error is its ``__cause__``."""

    exit_code = ExitCode.BAD_INPUT


def parse_ima_file(path: Path, *, quirks: Iterable[str] = ()) -> ima.ImaList:
    """Parse ``path`` as an IMA measurement list, ASCII or binary (untrusted until replayed
    against a quote). A file that does not parse and looks like another kind of file raises
    :class:`NotAnImaList` naming that kind, rather than the parser's complaint."""
    data = read_log_file(path, ima.DEFAULT_LIMITS.max_input_bytes)
    try:
        return ima.parse(data, quirks=quirks)
    except MalformedInput as exc:
        kind = guess_file_type(data, expected=IMA_LIST)
        if kind is None:
            raise
        raise NotAnImaList(f"{path} is not a Linux IMA measurement list: it looks like "
                           f"{kind}") from exc


def _to_bytes(value: Any, bank: str, pcr: int) -> bytes:
    alg = alg_by_name(bank)
    size = alg.digest_size if alg is not None else None
    if isinstance(value, int) and size is not None:  # YAML reads 0x... as an int
        try:
            return value.to_bytes(size, "big")
        except OverflowError as exc:
            raise ConfigError(f"PCR {pcr} ({bank}) value does not fit in {size} bytes") from exc
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0x")
        try:
            return bytes.fromhex(text)
        except ValueError as exc:
            raise ConfigError(f"PCR {pcr} ({bank}) is not hex: {value[:80]!r}") from exc
    raise ConfigError(f"PCR {pcr} ({bank}) value must be a hex string")


def load_quoted_pcrs(spec: str) -> dict[str, dict[int, bytes]]:
    """PCR values from a JSON/YAML file or an inline JSON string: bank -> {pcr: bytes}."""
    path = Path(spec)
    text = spec
    if not spec.lstrip().startswith("{"):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read PCR file {spec}: {exc}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"PCR values are neither JSON nor YAML: {exc}") from exc
    if isinstance(doc, dict) and isinstance(doc.get("pcrs"), dict):
        doc = doc["pcrs"]
    if not isinstance(doc, dict) or not doc:
        raise ConfigError('PCR values must be a mapping {"bank": {"pcr": "hex"}}')
    out: dict[str, dict[int, bytes]] = {}
    for bank, values in doc.items():
        if not isinstance(values, dict):
            raise ConfigError(f"bank {bank!r} must map PCR indices to values")
        bank_values: dict[int, bytes] = {}
        for pcr, value in values.items():
            try:
                index = int(pcr)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"bank {bank}: PCR index {pcr!r} is not a number") from exc
            bank_values[index] = _to_bytes(value, str(bank), index)
        out[str(bank)] = bank_values
    return out


def add_pcrs_argument(parser: argparse.ArgumentParser, help: str, *,
                      required: bool = False) -> None:
    """``--pcrs FILE_OR_JSON``: quoted PCR values, read by :func:`load_quoted_pcrs`."""
    parser.add_argument("--pcrs", required=required, metavar="FILE_OR_JSON", help=help)


def add_allow_quirk_argument(
        parser: argparse.ArgumentParser,
        help: str = "allow this named replay workaround (repeatable; with --pcrs)") -> None:
    """``--allow-quirk ID`` (repeatable): a named replay quirk of ``services.tpm.quirks`` the
    replay may use; ``args.allow_quirk`` is the list, empty by default."""
    parser.add_argument("--allow-quirk", action="append", default=[], metavar="ID", help=help)
