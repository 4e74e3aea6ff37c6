"""`fedtune certs`: a private CA and the TLS certificates of one federation (see issue.py)."""

from admin.certs.cli import certs_group

__all__ = ["certs_group"]
