"""Authentication: site tokens (stored as sha256), the admin credential, failed-authentication limits.

Adding, re-keying, revoking and listing sites is ``coordinator/sites.py``.

Decision 27: the Admin API accepts the admin token, or under mutual TLS an admin certificate
(fedtune.identity); a site certificate never. Failed authentications are counted per (peer address,
claimed site) in memory; past the limit a call is refused without its token being checked, and at most
one `auth.failed` event per key and window reaches the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from cryptography import x509
from cryptography.x509.oid import NameOID

from coordinator.ratelimit import SlidingWindow
from fedtune import identity
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.limits import MAX_SITE_NAME_CHARS, control_character
from storage.registry import record_event
from storage.uow import UowFactory

log = logging.getLogger("fedtune.coordinator.auth")
SITE_CACHE_SECONDS = 5.0  # how stale a site's token/revocation may be (another coordinator may change it)

SITE_HEADER = "x-fedtune-site"
AUTH_HEADER = "authorization"
CERT_CN_PROPERTY = "x509_common_name"  # gRPC auth-context property of the peer's certificate CN
CERT_PEM_PROPERTY = "x509_pem_cert"  # ... and of the whole certificate (PEM)
ADMIN_KEY = "<admin>"  # the claimed identity of an Admin API call in the failure counters
MAX_AUTH_FAILED_EVENTS_PER_WINDOW = 100  # all keys together: a flood of names cannot flood the events table
SHOWN_NAME_CHARS = 80  # of a claimed (attacker-chosen) site name, in events and counters

AuthContext = Mapping[str, Iterable[bytes]]


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


def peer_address(peer: str) -> str:
    """`ipv4:10.0.0.5` from gRPC's `ipv4:10.0.0.5:53211`: a client's port changes with each connection."""
    scheme, _, rest = peer.partition(":")
    if scheme in ("ipv4", "ipv6") and ":" in rest:
        return f"{scheme}:{rest.rpartition(':')[0]}"
    return peer


def certificate_names(auth_context: AuthContext) -> list[str]:
    """The client certificate's common names from a gRPC auth context (empty without a client cert)."""
    return [v.decode(errors="replace") for v in auth_context.get(CERT_CN_PROPERTY, ())]


def is_admin_certificate(auth_context: AuthContext) -> bool:
    """True if the (handshake-verified) client certificate is an admin certificate: CN
    `fedtune-admin:<name>` and OU `fedtune-admin` (`fedtune certs add-admin`)."""
    for pem in auth_context.get(CERT_PEM_PROPERTY, ()):
        try:
            subject = x509.load_pem_x509_certificate(pem).subject
        except ValueError:
            return False
        names = [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        units = [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
        return (
            len(names) == 1
            and isinstance(names[0], str)
            and identity.is_admin_common_name(names[0])
            and identity.ADMIN_OU in units
        )
    return False


def check_certificate_site(auth_context: AuthContext, site: str) -> None:
    """Under mutual TLS: PERMISSION_DENIED unless the client certificate was issued to `site` (its CN)."""
    names = certificate_names(auth_context)
    if site not in names:
        shown = ", ".join(repr(n) for n in names) or "none"
        raise FedtuneError(
            ErrorCode.PERMISSION_DENIED,
            f"the client certificate (CN {shown}) is not site {site!r}'s: a worker must present its own "
            "site's certificate (`fedtune certs add-site`) and authenticate as that site",
        )


class FailedAuthentications:
    """Failures per (peer address, claimed identity): the limit, and the bounded `auth.failed` events."""

    def __init__(
        self,
        uow_factory: UowFactory,
        limit: int,
        window_seconds: float,
        *,
        max_events_per_window: int = MAX_AUTH_FAILED_EVENTS_PER_WINDOW,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._uow_factory = uow_factory
        self._failures = SlidingWindow(limit, window_seconds, now=now)
        self._events_per_key = SlidingWindow(1, window_seconds, now=now)
        self._events_total = SlidingWindow(max_events_per_window, window_seconds, now=now)

    def check(self, peer: str, claimed: str) -> None:
        """RATE_LIMITED when this peer failed too often as `claimed`; the token is then not checked."""
        key = (peer_address(peer), claimed[:SHOWN_NAME_CHARS])
        wait = self._failures.retry_after(key)
        if wait > 0:
            who = "the admin token" if claimed == ADMIN_KEY else f"site {key[1]!r}"
            raise FedtuneError(
                ErrorCode.RATE_LIMITED,
                f"too many failed authentications as {who} from {key[0]} (limit {self._failures.limit} "
                f"per {self._failures.window_seconds:g} s); retry after {math.ceil(wait)} s",
            )

    def record(self, peer: str, claimed: str, reason: str) -> None:
        key = (peer_address(peer), claimed[:SHOWN_NAME_CHARS])
        count = self._failures.hit(key)
        log.warning("authentication failed", extra={"peer": key[0], "claimed": key[1], "reason": reason})
        if not self._events_per_key.try_hit(key) or not self._events_total.try_hit(ADMIN_KEY):
            return
        who = "the admin API" if claimed == ADMIN_KEY else f"site {key[1]!r}"
        with self._uow_factory() as uow:
            record_event(
                uow,
                "auth.failed",
                f"failed authentication as {who} from {key[0]}: {reason}",
                data={"peer": key[0], "claimed": key[1], "reason": reason, "failures_in_window": count},
            )
            uow.commit()


class SiteAuth:
    def __init__(
        self,
        uow_factory: UowFactory,
        admin_token: str | None,
        *,
        tls_mode: str = "plaintext",
        failures_per_window: int = 10,
        failure_window_seconds: float = 60.0,
    ) -> None:
        self._uow_factory = uow_factory
        self._admin_token = admin_token
        self._tls_mode = tls_mode
        self._failures = FailedAuthentications(uow_factory, failures_per_window, failure_window_seconds)
        # name -> (site id, token hash, revoked, read at): every call authenticates, most of them
        # heartbeats; a registered site is read from the registry at most every SITE_CACHE_SECONDS
        # (SiteService.forget drops an entry at once when its token rotates or the site is revoked)
        self._known: dict[str, tuple[int, str, bool, float]] = {}
        self._known_lock = threading.Lock()

    def forget(self, site: str) -> None:
        """Drop what is known of `site` (its token or its revocation changed)."""
        with self._known_lock:
            self._known.pop(site, None)

    def _site_row(self, site: str) -> tuple[int, str, bool] | None:
        """(id, token hash, revoked) of a registered site, from the registry or a fresh cache entry."""
        now = time.monotonic()
        with self._known_lock:
            known = self._known.get(site)
        if known is not None and now - known[3] < SITE_CACHE_SECONDS:
            return known[:3]
        with self._uow_factory.reader() as uow:
            row = uow.sites.by_name(site)
            found = (row.id, row.token_hash, row.revoked_at is not None) if row is not None else None
        if found is not None:
            with self._known_lock:
                self._known[site] = (*found, now)
        return found

    # ----------------------------------------------------------------- the admin credential
    @property
    def admin_open(self) -> bool:
        """No credential needed: no admin token and plaintext (local trials only)."""
        return self._admin_token is None and self._tls_mode == "plaintext"

    def admin_credential(self) -> str:
        """What the Admin API accepts, in words (logged at start)."""
        if self.admin_open:
            return "none: the Admin API is open to anyone who can reach this port (no admin token, no TLS)"
        token = "the admin token" if self._admin_token is not None else ""
        cert = "an admin certificate (fedtune certs add-admin)" if self._tls_mode == "mtls" else ""
        if token or cert:
            return " or ".join(filter(None, (token, cert)))
        return "none accepted: TLS without an admin token or client certificates closes the Admin API"

    def check_admin(self, token: str, *, peer: str = "", auth_context: AuthContext | None = None) -> None:
        """Pass an Admin API call that holds an admin credential; UNAUTHENTICATED / PERMISSION_DENIED /
        RATE_LIMITED otherwise."""
        if self.admin_open:
            return
        if self._tls_mode == "mtls" and auth_context is not None and is_admin_certificate(auth_context):
            return
        self._failures.check(peer, ADMIN_KEY)
        if self._admin_token is not None:
            if token and hmac.compare_digest(token.encode(), self._admin_token.encode()):
                return
            self._failures.record(peer, ADMIN_KEY, "missing or wrong admin token")
            alternative = " or present an admin certificate" if self._tls_mode == "mtls" else ""
            raise FedtuneError(
                ErrorCode.UNAUTHENTICATED,
                f"missing or wrong admin token (send `authorization: Bearer <token>`{alternative})",
            )
        self._failures.record(peer, ADMIN_KEY, "no admin credential")
        if self._tls_mode == "mtls":
            shown = ", ".join(repr(n) for n in certificate_names(auth_context or {})) or "none"
            raise FedtuneError(
                ErrorCode.PERMISSION_DENIED,
                f"the client certificate (CN {shown}) is not an admin certificate, and this coordinator has "
                "no admin token: use a certificate made by `fedtune certs add-admin` (CN fedtune-admin:NAME)",
            )
        raise FedtuneError(
            ErrorCode.PERMISSION_DENIED,
            "this coordinator serves TLS without an admin token or client certificates, so its Admin API "
            "is closed: set admin_token (FEDTUNE_ADMIN_TOKEN), or serve mutual TLS and use an admin "
            "certificate",
        )

    # ----------------------------------------------------------------- sites
    def authenticate_site(self, site: str, token: str, peer: str = "") -> int:
        """The site's id if `token` is its token; UNAUTHENTICATED otherwise (same message either way),
        PERMISSION_DENIED for a revoked site, RATE_LIMITED after too many failures."""
        self._failures.check(peer, site)
        if not site or not token:
            self._failures.record(peer, site, "no site name or token")
            raise FedtuneError(
                ErrorCode.UNAUTHENTICATED,
                f"send the metadata `{SITE_HEADER}: <site>` and `{AUTH_HEADER}: Bearer <token>`",
            )
        if len(site) > MAX_SITE_NAME_CHARS or control_character(site) is not None:
            # no site has such a name, and PostgreSQL could not even compare it (NUL)
            raise FedtuneError(ErrorCode.UNAUTHENTICATED, f"unknown site {site[:80]!r} or wrong token")
        row = self._site_row(site)
        matches = row is not None and hmac.compare_digest(row[1], hash_token(token))
        site_id, revoked = (row[0], row[2]) if row is not None else (0, False)
        if not matches:  # recorded outside the read: SQLite allows one writer at a time
            self._failures.record(peer, site, "unknown site or wrong token")
            raise FedtuneError(ErrorCode.UNAUTHENTICATED, f"unknown site {site!r} or wrong token")
        if revoked:
            raise FedtuneError(
                ErrorCode.PERMISSION_DENIED,
                f"site {site!r} was revoked by the coordinator's operator; ask them to add a new site",
            )
        return site_id
