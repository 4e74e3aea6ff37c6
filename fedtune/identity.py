"""Who is who: the site-name rule and the marks of an admin certificate (decision 27).

Shared by the coordinator (AddSite, seeded sites, the Admin API's certificate check) and
`fedtune certs` (the CN of a site or admin certificate), so a name that one accepts the other does too.

- A site name is 1-64 characters of ASCII lowercase letters, digits, '.', '_' and '-', starting with
  a letter or a digit: no look-alike Unicode letters, no case variants of another site, fits a
  certificate CN, safe as a folder name.
- An admin certificate's CN is ``fedtune-admin:<name>`` and its subject carries the organizational
  unit ``fedtune-admin``. ':' is outside the site alphabet, so no site certificate can carry that CN.
"""

from __future__ import annotations

import re

from fedtune.errors import ErrorCode, FedtuneError

SITE_NAME_MAX = 64  # a certificate CN holds at most 64 characters
SITE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
SITE_NAME_RULE = (
    f"1-{SITE_NAME_MAX} characters: ASCII lowercase letters, digits, '.', '_' or '-', "
    "starting with a letter or digit"
)

ADMIN_CN_PREFIX = "fedtune-admin:"
ADMIN_OU = "fedtune-admin"
ADMIN_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,49}\Z")  # CN = prefix + name <= 64 characters


def check_site_name(name: str) -> str:
    """`name` if it follows the site-name rule; INVALID_ARGUMENT saying the rule otherwise."""
    if not SITE_NAME_PATTERN.match(name):
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"bad site name {name!r}: a site name is {SITE_NAME_RULE}"
        )
    return name


def admin_common_name(name: str) -> str:
    """The CN of admin `name`'s certificate; INVALID_ARGUMENT unless `name` follows the rule."""
    if not ADMIN_NAME_PATTERN.match(name):
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"bad admin name {name!r}: use 1-50 ASCII lowercase letters, digits, '.', '_' or '-'",
        )
    return ADMIN_CN_PREFIX + name


def is_admin_common_name(common_name: str) -> bool:
    prefix, _, name = common_name.partition(":")
    return prefix + ":" == ADMIN_CN_PREFIX and bool(ADMIN_NAME_PATTERN.match(name))
