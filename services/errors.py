"""The root of every error hostgate raises on purpose.

The CLI prints a ``HostgateError`` as one line and exits non-zero; anything else is a bug and
keeps its traceback. Each package derives its own family from it (``services.tpm.errors``,
``services.runtime.codec``, ...).
"""

from __future__ import annotations

from typing import ClassVar


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


class ConfigError(HostgateError):
    """A flag, environment variable or file the operator gave is wrong or missing."""
