"""The configuration's building blocks shared by every section: strict frozen models,
credentials with their secret sources, TLS client policy, checked CA files and URLs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from statsfeeder.config_checks import (
    pem_ca_file,
    read_secret,
    url_without_credentials,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


CAFile = Annotated[Path, AfterValidator(pem_ca_file)]
"""A PEM CA bundle, checked when the config is loaded (so ``validate --offline`` sees it)."""
PlainURL = AfterValidator(url_without_credentials)


class Credentials(Strict):
    username: str
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _resolve_password(self, info: ValidationInfo) -> Credentials:
        environ = (info.context or {}).get("environ", os.environ)
        resolved = read_secret(self.password, self.password_file, self.password_env, "password",
                                environ)
        if resolved is None:
            raise ValueError("one of password, password_file or password_env is required")
        object.__setattr__(self, "password", resolved)
        return self

    def secret(self) -> str:
        assert self.password is not None
        return self.password.get_secret_value()


class TLS(Strict):
    ca_file: CAFile | None = None
    """PEM bundle to verify the server with; None uses the system store."""
    thumbprint: str | None = None
    """SHA-256 fingerprint of the server certificate, for self-signed vCenters."""
    insecure: bool = False
    """Skip verification entirely (logs a warning at every connect)."""

    @field_validator("thumbprint")
    @classmethod
    def _normalise_thumbprint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = value.replace(":", "").lower()
        if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
            raise ValueError("must be a SHA-256 fingerprint: 64 hex digits, colons allowed")
        return digits

    @model_validator(mode="after")
    def _pin_or_insecure(self) -> TLS:
        if self.insecure and self.thumbprint:
            raise ValueError("insecure and thumbprint together: insecure would ignore the pin; "
                             "keep the thumbprint and remove insecure")
        return self
