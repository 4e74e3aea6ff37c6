"""Make a private CA and the TLS certificates of one federation (ECDSA P-256, `cryptography`).

Layout of a certs folder (each party's sub-folder is what that party gets; `ca.key` stays with
whoever runs `fedtune certs`):

    ca.pem ca.key                     the CA
    coordinator/ca.pem cert.pem key.pem   server cert (SANs: coordinator hosts, localhost, 127.0.0.1)
    admin/ca.pem cert.pem key.pem         client cert, CN "fedtune-admin:admin", OU "fedtune-admin"
    admins/<name>/ca.pem cert.pem key.pem  client cert, CN "fedtune-admin:<name>", OU "fedtune-admin"
    sites/<site>/ca.pem cert.pem key.pem  client cert, CN = the site's name

Private keys are written 0600; no file is replaced unless `force`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedtune import identity
from fedtune.errors import ErrorCode, FedtuneError

DEFAULT_ADMIN = "admin"  # the admin certificate `certs init` makes: CN "fedtune-admin:admin"
CA_CN = "fedtune CA"
ALWAYS_HOSTS = ("localhost", "127.0.0.1")
Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Bundle:
    """The three files a party gets."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.folder / "cert.pem"

    @property
    def key(self) -> Path:
        return self.folder / "key.pem"

    def files(self) -> list[Path]:
        return [self.ca, self.cert, self.key]


def coordinator_bundle(out: Path) -> Bundle:
    return Bundle(out / "coordinator")


def admin_bundle(out: Path, name: str = DEFAULT_ADMIN) -> Bundle:
    """`admin/` for the admin `certs init` makes, `admins/<name>/` for one made by `certs add-admin`."""
    identity.admin_common_name(name)
    return Bundle(out / "admin") if name == DEFAULT_ADMIN else Bundle(out / "admins" / name)


def site_bundle(out: Path, site: str) -> Bundle:
    return Bundle(out / "sites" / check_site_name(site))


def check_site_name(site: str) -> str:
    if not identity.SITE_NAME_PATTERN.match(site):
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"site name {site!r} cannot be a certificate name: a site name is {identity.SITE_NAME_RULE}",
        )
    return site


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew


def _name(common_name: str, unit: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if unit is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    return x509.Name(attributes)


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, *ALWAYS_HOSTS]):  # keep order, drop repeats
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def make_ca(days: int) -> tuple[x509.Certificate, Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_CN))
        .issuer_name(_name(CA_CN))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca_cert: x509.Certificate,
    ca_key: Key,
    common_name: str,
    days: int,
    *,
    server_hosts: Sequence[str] = (),
    client: bool = True,
    unit: str | None = None,
) -> tuple[x509.Certificate, Key]:
    """A cert signed by the CA: a server cert when `server_hosts` is given, a client cert when `client`;
    `unit` adds an organizational unit to the subject (the admin mark, identity.ADMIN_OU)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_hosts else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, unit))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server_hosts:
        builder = builder.add_extension(_san(server_hosts), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_admin_leaf(
    ca_cert: x509.Certificate, ca_key: Key, name: str, days: int
) -> tuple[x509.Certificate, Key]:
    """An admin client cert: CN "fedtune-admin:<name>" and OU "fedtune-admin" (fedtune.identity)."""
    return make_leaf(ca_cert, ca_key, identity.admin_common_name(name), days, unit=identity.ADMIN_OU)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def refuse_existing(paths: Iterable[Path], force: bool) -> None:
    """INVALID_ARGUMENT listing the files that exist, unless `force` (checked before writing anything)."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"refusing to overwrite {', '.join(existing)} (pass --force to replace them)",
        )


def write_file(path: Path, data: bytes, *, secret: bool) -> None:
    """Write `data`; a secret (private key) is created 0600 and never readable by others, even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o600 if secret else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # an existing file (--force) keeps its old mode otherwise
        os.write(fd, data)
    finally:
        os.close(fd)


def write_bundle(bundle: Bundle, ca_cert: x509.Certificate, cert: x509.Certificate, key: Key) -> None:
    write_file(bundle.ca, cert_pem(ca_cert), secret=False)
    write_file(bundle.cert, cert_pem(cert), secret=False)
    write_file(bundle.key, key_pem(key), secret=True)


def load_ca(ca_dir: Path) -> tuple[x509.Certificate, Key]:
    """The CA of a certs folder made by `fedtune certs init`."""
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"cannot load the CA from {ca_dir} (ca.pem and ca.key, made by `fedtune certs init`): {err}",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"{ca_dir / 'ca.key'} is not an ECDSA key")
    return cert, key
