"""`fedtune certs init` / `add-site`: the files, names, SANs, key permissions, and no silent overwrite."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from admin.certs import certs_group


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _init(out: Path, *extra: str) -> tuple[int, str]:
    args = ["init", "--out", str(out), "--coordinator-host", "coord.example.org"]
    args += ["--coordinator-host", "10.0.0.5", "--site", "hospital-a", *extra]
    result = CliRunner().invoke(certs_group, args)
    return result.exit_code, result.output


def test_init_writes_ca_coordinator_admin_and_site_bundles_with_private_keys_0600(tmp_path: Path) -> None:
    # Execute
    code, output = _init(tmp_path / "certs")

    # Assert
    assert code == 0, output
    out = tmp_path / "certs"
    for bundle in ("coordinator", "admin", "sites/hospital-a"):
        for name in ("ca.pem", "cert.pem", "key.pem"):
            assert (out / bundle / name).is_file(), f"{bundle}/{name} missing"
        assert _mode(out / bundle / "key.pem") == 0o600
        assert (out / bundle / "ca.pem").read_bytes() == (out / "ca.pem").read_bytes()
    assert _mode(out / "ca.key") == 0o600
    assert isinstance(_cert(out / "ca.pem").public_key(), ec.EllipticCurvePublicKey)


def test_coordinator_cert_names_every_host_plus_localhost_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    # Prepare
    _init(tmp_path)
    ca, cert = _cert(tmp_path / "ca.pem"), _cert(tmp_path / "coordinator" / "cert.pem")

    # Execute
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    # Assert
    assert set(san.get_values_for_type(x509.DNSName)) == {"coord.example.org", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    }
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    cert.verify_directly_issued_by(ca)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_site_and_admin_certs_are_client_certs_named_after_their_holder(tmp_path: Path) -> None:
    # Prepare
    _init(tmp_path)

    # Execute
    site, admin = _cert(tmp_path / "sites/hospital-a/cert.pem"), _cert(tmp_path / "admin/cert.pem")

    # Assert
    assert _cn(site) == "hospital-a"
    assert _cn(admin) == "fedtune-admin:admin"
    for cert in (site, admin):
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        cert.verify_directly_issued_by(_cert(tmp_path / "ca.pem"))


def test_init_refuses_to_overwrite_existing_files_without_force(tmp_path: Path) -> None:
    # Prepare
    _init(tmp_path)
    before = (tmp_path / "ca.key").read_bytes()

    # Execute
    code, output = _init(tmp_path)
    forced_code, _ = _init(tmp_path, "--force")

    # Assert
    assert code != 0 and "refusing to overwrite" in output and "--force" in output
    assert forced_code == 0
    assert (tmp_path / "ca.key").read_bytes() != before
    assert _mode(tmp_path / "ca.key") == 0o600


def test_add_site_signs_a_new_site_with_the_existing_ca_and_refuses_a_second_time(tmp_path: Path) -> None:
    # Prepare
    _init(tmp_path)
    runner = CliRunner()

    # Execute
    first = runner.invoke(certs_group, ["add-site", "--ca-dir", str(tmp_path), "hospital-c"])
    again = runner.invoke(certs_group, ["add-site", "--ca-dir", str(tmp_path), "hospital-c"])
    bad = runner.invoke(certs_group, ["add-site", "--ca-dir", str(tmp_path), "../evil"])

    # Assert
    assert first.exit_code == 0, first.output
    cert = _cert(tmp_path / "sites/hospital-c/cert.pem")
    assert _cn(cert) == "hospital-c"
    cert.verify_directly_issued_by(_cert(tmp_path / "ca.pem"))
    assert _mode(tmp_path / "sites/hospital-c/key.pem") == 0o600
    assert again.exit_code != 0 and "refusing to overwrite" in again.output
    assert bad.exit_code != 0 and "cannot be a certificate name" in bad.output
