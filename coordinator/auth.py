"""Identity: site tokens (stored as sha256) and the admin token."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable, Mapping

from sqlalchemy import select

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.limits import MAX_SITE_NAME_CHARS, control_character
from storage import models
from storage.registry import record_event
from storage.uow import UnitOfWorkFactory

log = logging.getLogger("fedtune.coordinator.auth")

SITE_HEADER = "x-fedtune-site"
AUTH_HEADER = "authorization"
CERT_CN_PROPERTY = "x509_common_name"  # gRPC auth-context property of the peer's certificate CN


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(metadata: Iterable[tuple[str, str | bytes]]) -> tuple[str, str]:
    """(site name, token) from call metadata; empty strings when absent."""
    values = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in metadata}
    token = values.get(AUTH_HEADER, "")
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    else:
        token = ""
    return values.get(SITE_HEADER, ""), token


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The client certificate's common names from a gRPC auth context (empty without a client cert)."""
    return [v.decode(errors="replace") for v in auth_context.get(CERT_CN_PROPERTY, ())]


def check_certificate_site(auth_context: Mapping[str, Iterable[bytes]], site: str) -> None:
    """Under mutual TLS: PERMISSION_DENIED unless the client certificate was issued to `site` (its CN)."""
    names = certificate_names(auth_context)
    if site not in names:
        shown = ", ".join(repr(n) for n in names) or "none"
        raise FedtuneError(
            ErrorCode.PERMISSION_DENIED,
            f"the client certificate (CN {shown}) is not site {site!r}'s: a worker must present its own "
            "site's certificate (`fedtune certs add-site`) and authenticate as that site",
        )


class SiteAuth:
    def __init__(self, uow_factory: UnitOfWorkFactory, admin_token: str | None) -> None:
        self._uow_factory = uow_factory
        self._admin_token = admin_token

    @property
    def admin_open(self) -> bool:
        return self._admin_token is None

    def check_admin(self, token: str) -> None:
        if self._admin_token is None:
            return
        if not token or not hmac.compare_digest(token, self._admin_token):
            raise FedtuneError(
                ErrorCode.UNAUTHENTICATED,
                "missing or wrong admin token (send `authorization: Bearer <token>`)",
            )

    def authenticate_site(self, site: str, token: str) -> int:
        """The site's id if `token` is its token; UNAUTHENTICATED otherwise (same message either way)."""
        if not site or not token:
            raise FedtuneError(
                ErrorCode.UNAUTHENTICATED,
                f"send the metadata `{SITE_HEADER}: <site>` and `{AUTH_HEADER}: Bearer <token>`",
            )
        if len(site) > MAX_SITE_NAME_CHARS or control_character(site) is not None:
            # no site has such a name, and PostgreSQL could not even compare it (NUL)
            raise FedtuneError(ErrorCode.UNAUTHENTICATED, f"unknown site {site[:80]!r} or wrong token")
        with self._uow_factory() as uow:
            row = uow.session.scalars(select(models.Site).where(models.Site.name == site)).first()
            if row is None or not hmac.compare_digest(row.token_hash, hash_token(token)):
                raise FedtuneError(ErrorCode.UNAUTHENTICATED, f"unknown site {site!r} or wrong token")
            return row.id

    def add_site(self, name: str) -> str:
        """Create a site and return its token (shown once; only the hash is kept)."""
        name = name.strip()
        if (
            not name
            or len(name) > MAX_SITE_NAME_CHARS
            or control_character(name) is not None
            or any(c.isspace() or c in ":," for c in name)
        ):
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"a site name must be 1-{MAX_SITE_NAME_CHARS} characters, no spaces, control characters, "
                "':' or ','",
            )
        token = secrets.token_urlsafe(32)
        with self._uow_factory() as uow:
            exists = uow.session.scalars(select(models.Site).where(models.Site.name == name)).first()
            if exists is not None:
                raise FedtuneError(ErrorCode.ALREADY_EXISTS, f"site {name!r} already exists")
            uow.session.add(models.Site(name=name, token_hash=hash_token(token)))
            record_event(uow, "site.added", f"site {name} added", data={"site": name})
            uow.commit()
        return token

    def seed_sites(self, sites: Mapping[str, str]) -> None:
        """Create or re-key the sites given in the settings (compose installs)."""
        with self._uow_factory() as uow:
            for name, token in sites.items():
                row = uow.session.scalars(select(models.Site).where(models.Site.name == name)).first()
                if row is None:
                    uow.session.add(models.Site(name=name, token_hash=hash_token(token)))
                else:
                    row.token_hash = hash_token(token)
            uow.commit()
        if sites:
            log.info("seeded sites from settings", extra={"sites": sorted(sites)})
