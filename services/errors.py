"""The root of every error hostgate raises on purpose.

The CLI prints a ``HostgateError`` as one line and exits non-zero; anything else is a bug and
keeps its traceback. Each package derives its own family from it (``services.tpm.errors``,
``services.runtime.codec``, ...).
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    """Every exit status ``hostgate`` uses, in one place: what each means is
    :data:`EXIT_STATUS_MEANING` (``hostgate --help`` prints it; the README copies it). A
    deliberate error picks its status through :func:`exit_code_for`."""

    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    FAIL_CLOSED = 3
    BAD_INPUT = 4
    CONFIG = 5
    UNAVAILABLE = 6
    ERROR = 7
    INTERRUPTED = 130
    BROKEN_PIPE = 141


EXIT_STATUS_MEANING: dict[ExitCode, str] = {
    ExitCode.OK: "done; the answer is yes",
    ExitCode.CHECK_FAILED: "done; the answer is no (a log that does not replay to the PCRs, "
                           "a policy the host fails, a broker not ready, topics that drifted)",
    ExitCode.USAGE: "the command line is wrong (unknown flag or command, missing argument)",
    ExitCode.FAIL_CLOSED: "the claims fail closed: any policy would reject them (log claims)",
    ExitCode.BAD_INPUT: "a file is not what the command reads (not a boot log, truncated...)",
    ExitCode.CONFIG: "a flag value, file or environment variable is wrong or missing",
    ExitCode.UNAVAILABLE: "Kafka (a broker, a topic, the registry) cannot be reached now",
    ExitCode.ERROR: "any other refusal (a policy version that is not newer...)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C: 128 + SIGINT)",
    ExitCode.BROKEN_PIPE: "the reader closed the pipe (| head: 128 + SIGPIPE, as a shell says)",
}
"""One phrase per exit status, for ``--help`` and the README."""


class HostgateError(Exception):
    """Base of every deliberate hostgate error.

    ``retriable`` tells a shell whether trying the same thing again can succeed (a broker that
    is not up yet) or not (malformed bytes from a host). ``host_fault`` says the error is the
    fault of whoever sent the input (malformed or unverifiable evidence, an unsigned request):
    a stage answers it with a refusal that names what and where, never with a dead letter.
    ``services.runtime.faults.classify`` reads both, for every stage.
    """

    retriable: ClassVar[bool] = False
    host_fault: ClassVar[bool] = False
    exit_code: ClassVar[ExitCode] = ExitCode.ERROR
    """The CLI's exit status for this error when it is not retriable (:func:`exit_code_for`)."""


class ConfigError(HostgateError):
    """A flag, environment variable or file the operator gave is wrong or missing."""

    exit_code = ExitCode.CONFIG


def exit_code_for(exc: HostgateError) -> ExitCode:
    """The status ``exc`` ends a command with: a retriable error means the service is not there
    now (:attr:`ExitCode.UNAVAILABLE`); otherwise the error's class says (``exit_code``)."""
    return ExitCode.UNAVAILABLE if exc.retriable else exc.exit_code

