"""One SoftHSM2 configuration for the whole test session, with every token tests use.

python-pkcs11 loads a PKCS#11 module once per process and SoftHSM2 reads ``SOFTHSM2_CONF`` and
its token directory when the module is first initialised, so a second test module that points
``SOFTHSM2_CONF`` elsewhere would find none of its tokens. Every token is therefore created here,
before any test loads the module, in one directory; each test module then makes its own keys
in its own token.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final, NamedTuple

import pytest

MODULE_CANDIDATES: Final = ("/usr/lib/softhsm/libsofthsm2.so",
                            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                            "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")


class Token(NamedTuple):
    """A test token: its user PIN and security-officer PIN (test values, no secret)."""

    pin: str
    so_pin: str


TOKENS: Final[Mapping[str, Token]] = {
    "hostgate-ca": Token("4711-user-pin", "9999-so-pin"),  # the issuer's CA key
    "hostgate-verifier": Token("2468-ear-pin", "1357-so"),  # the verifier's EAR key
}


def softhsm_module() -> Path:
    """The SoftHSM2 PKCS#11 module (``HOSTGATE_PKCS11_MODULE`` overrides); a missing one fails
    the test that needs it."""
    override = os.environ.get("HOSTGATE_PKCS11_MODULE")
    for candidate in ([override] if override else []) + list(MODULE_CANDIDATES):
        if Path(candidate).is_file():
            return Path(candidate)
    pytest.fail("SoftHSM2 is not installed: `apt-get install softhsm2` "
                "(or set HOSTGATE_PKCS11_MODULE to a PKCS#11 module)")


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The module path, with ``SOFTHSM2_CONF`` set for the session and every :data:`TOKENS`
    initialised (empty: no keys yet)."""
    module = softhsm_module()
    util = shutil.which("softhsm2-util")
    if util is None:
        pytest.fail("softhsm2-util not found: `apt-get install softhsm2`")
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    saved = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        for label, token in TOKENS.items():
            subprocess.run([util, "--init-token", "--free", "--label", label, "--pin",
                            token.pin, "--so-pin", token.so_pin], check=True,
                           capture_output=True, timeout=60)
        yield module
    finally:
        if saved is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = saved
