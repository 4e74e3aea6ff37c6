"""`fedtune certs ...`: make a CA and the TLS certificates of a coordinator, its sites and the admin."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from cryptography import x509

from admin.certs import issue
from fedtune.errors import FedtuneError

DEFAULT_DAYS = 825
DEFAULT_CA_DAYS = 3650

INIT_EXAMPLES = """
\b
Examples:
  fedtune certs init --out ./certs --coordinator-host coord.example.org --site hospital-a --site hospital-b
  # compose install (workers reach the coordinator as `coordinator`):
  fedtune certs init --out docker/certs --coordinator-host coordinator --site site-a --site site-b

\b
Writes (private keys 0600; give each party only its own folder, keep ca.key offline):
  ca.pem ca.key                         the CA
  coordinator/{ca.pem,cert.pem,key.pem}  coordinator serve --tls-cert/--tls-key/--tls-client-ca
  sites/NAME/{ca.pem,cert.pem,key.pem}   worker run --tls-ca/--tls-cert/--tls-key (CN = NAME)
  admin/{ca.pem,cert.pem,key.pem}        fedtune admin --tls-ca/--tls-cert/--tls-key
                                        (an admin certificate: CN fedtune-admin:admin)
"""

ADD_SITE_EXAMPLES = """
\b
Example:
  fedtune certs add-site --ca-dir ./certs hospital-c    # writes ./certs/sites/hospital-c/
"""


ADD_ADMIN_EXAMPLES = """
\b
Example:
  fedtune certs add-admin --ca-dir ./certs alice        # writes ./certs/admins/alice/
  fedtune admin --tls-ca certs/admins/alice/ca.pem --tls-cert certs/admins/alice/cert.pem \\
      --tls-key certs/admins/alice/key.pem status

\b
An admin certificate (CN fedtune-admin:NAME, OU fedtune-admin) is an admin credential on a mutual-TLS
coordinator: it may call the Admin API without the admin token. A site certificate never is.
"""


F = TypeVar("F", bound=Callable[..., Any])


def _fail(err: FedtuneError) -> NoReturn:
    raise click.ClickException(err.message)


def _leaf_options(holder: str) -> Callable[[F], F]:
    """The options of a command that signs one more leaf certificate with the existing CA."""

    def decorate(command: F) -> F:
        for option in reversed(
            [
                click.option(
                    "--ca-dir",
                    type=click.Path(exists=True, file_okay=False, path_type=Path),
                    required=True,
                    help="The folder `fedtune certs init` wrote (with ca.pem and ca.key).",
                ),
                click.argument("name"),
                click.option(
                    "--days",
                    type=click.IntRange(1, 3650),
                    default=DEFAULT_DAYS,
                    show_default=True,
                    help="Validity.",
                ),
                click.option("--force", is_flag=True, help=f"Replace the {holder}'s existing files."),
            ]
        ):
            command = option(command)
        return command

    return decorate


def _sign_with_ca(
    ca_dir: Path,
    force: bool,
    bundle_for: Callable[[], issue.Bundle],
    make: Callable[[x509.Certificate, issue.Key, str, int], tuple[x509.Certificate, issue.Key]],
    name: str,
    days: int,
) -> issue.Bundle:
    """One more leaf certificate signed by the CA in `ca_dir`, written to its bundle folder."""
    try:
        bundle = bundle_for()
        issue.refuse_existing(bundle.files(), force)
        ca_cert, ca_key = issue.load_ca(ca_dir)
        cert, key = make(ca_cert, ca_key, name, days)
        issue.write_bundle(bundle, ca_cert, cert, key)
    except FedtuneError as err:
        _fail(err)
    return bundle


@click.group("certs")
def certs_group() -> None:
    """Make a private CA and TLS certificates (ECDSA P-256) for a coordinator, its sites and the admin.

    With them the coordinator serves mutual TLS: a worker must present the certificate of the site
    it authenticates as (its CN), and still send the site's token.
    """


@certs_group.command("init", epilog=INIT_EXAMPLES)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write into."
)
@click.option(
    "--coordinator-host",
    "hosts",
    multiple=True,
    required=True,
    metavar="NAME",
    help="DNS name or IP the sites dial (repeatable); localhost and 127.0.0.1 are always added.",
)
@click.option(
    "--site", "sites", multiple=True, metavar="NAME", help="A site to make a client cert for (repeatable)."
)
@click.option(
    "--days", type=click.IntRange(1, 3650), default=DEFAULT_DAYS, show_default=True, help="Validity."
)
@click.option(
    "--ca-days",
    type=click.IntRange(1, 36500),
    default=DEFAULT_CA_DAYS,
    show_default=True,
    help="CA validity.",
)
@click.option("--force", is_flag=True, help="Replace existing files (a new CA invalidates every old cert).")
def init_command(
    out: Path, hosts: tuple[str, ...], sites: tuple[str, ...], days: int, ca_days: int, force: bool
) -> None:
    """Make a CA, the coordinator's server cert, one client cert per --site and one for the admin."""
    try:
        bundles = [issue.coordinator_bundle(out), issue.admin_bundle(out)]
        bundles += [issue.site_bundle(out, site) for site in dict.fromkeys(sites)]
        issue.refuse_existing(
            [out / "ca.pem", out / "ca.key", *(f for b in bundles for f in b.files())], force
        )
        ca_cert, ca_key = issue.make_ca(ca_days)
        issue.write_file(out / "ca.key", issue.key_pem(ca_key), secret=True)
        issue.write_file(out / "ca.pem", issue.cert_pem(ca_cert), secret=False)
        cert, key = issue.make_leaf(ca_cert, ca_key, hosts[0][:64], days, server_hosts=hosts, client=True)
        issue.write_bundle(bundles[0], ca_cert, cert, key)
        cert, key = issue.make_admin_leaf(ca_cert, ca_key, issue.DEFAULT_ADMIN, days)
        issue.write_bundle(bundles[1], ca_cert, cert, key)
        for site, bundle in zip(dict.fromkeys(sites), bundles[2:], strict=True):
            cert, key = issue.make_leaf(ca_cert, ca_key, site, days)
            issue.write_bundle(bundle, ca_cert, cert, key)
    except FedtuneError as err:
        _fail(err)
    click.echo(f"CA:          {out / 'ca.pem'} (keep {out / 'ca.key'} offline)")
    click.echo(
        f"coordinator: {bundles[0].folder}/ for {', '.join(dict.fromkeys([*hosts, *issue.ALWAYS_HOSTS]))}"
    )
    click.echo(f"admin:       {bundles[1].folder}/")
    for bundle in bundles[2:]:
        click.echo(f"site:        {bundle.folder}/")


@certs_group.command("add-site", epilog=ADD_SITE_EXAMPLES)
@_leaf_options("site")
def add_site_command(ca_dir: Path, name: str, days: int, force: bool) -> None:
    """Make the client cert of one more site NAME (its CN), signed by the existing CA."""
    bundle = _sign_with_ca(
        ca_dir, force, lambda: issue.site_bundle(ca_dir, name), issue.make_leaf, name, days
    )
    click.echo(f"site: {bundle.folder}/ (give this folder to {name})")


@certs_group.command("add-admin", epilog=ADD_ADMIN_EXAMPLES)
@_leaf_options("admin")
def add_admin_command(ca_dir: Path, name: str, days: int, force: bool) -> None:
    """Make an admin client cert for operator NAME (CN fedtune-admin:NAME), signed by the existing CA."""
    bundle = _sign_with_ca(
        ca_dir, force, lambda: issue.admin_bundle(ca_dir, name), issue.make_admin_leaf, name, days
    )
    click.echo(f"admin: {bundle.folder}/ (give this folder to {name}; it is an admin credential)")
