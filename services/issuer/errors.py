"""Errors of the issuer stage.

::

    HostgateError
     └── IssuerError
          ├── CaKeyError            the CA key or certificate cannot be loaded or used
          │                         (wrong passphrase or PIN, unencrypted PEM, key/cert mismatch)
          ├── IssuanceError         a certificate or credential cannot be built from the input
          │                         (bad host id, missing attested PCRs, serial out of range)
          ├── SealedPayloadError    an encrypted credential payload does not open (host side)
          ├── ExtensionError        the hostgate attestation extension does not parse
          └── InvalidTransition     a host trust-state change the transition table forbids

No message ever carries key material, a passphrase or a PIN: messages name the *source*
(file path, environment variable, token label) and what is wrong with it.
"""

from __future__ import annotations

from services.errors import HostgateError


class IssuerError(HostgateError):
    """Base of the issuer's deliberate errors."""


class CaKeyError(IssuerError):
    """The issuing CA's key or certificate cannot be loaded or does not work."""


class IssuanceError(IssuerError):
    """A host certificate or sealed credential cannot be built from the given input."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{message} (field {field})" if field else message)


class SealedPayloadError(IssuerError):
    """An encrypted credential payload is malformed, or was not made for this certificate."""

    def __init__(self, message: str, *, offset: int) -> None:
        self.offset = offset
        super().__init__(f"{message} (at byte offset {offset})")


class ExtensionError(IssuerError):
    """The hostgate attestation extension's DER does not parse (byte offset into its value)."""

    def __init__(self, message: str, *, offset: int) -> None:
        self.offset = offset
        super().__init__(f"{message} (at byte offset {offset})")


class InvalidTransition(IssuerError):
    """A host trust-state change that the transition table does not allow."""

    def __init__(self, host_id: str, state: str, trigger: str) -> None:
        self.host_id = host_id
        self.state = state
        self.trigger = trigger
        super().__init__(f"host {host_id}: trigger {trigger} is not allowed in state {state}")
