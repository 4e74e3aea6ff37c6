"""`fedtune admin`: a thin gRPC client of the coordinator's Admin service (design.md section 1).

The CLI never opens the database; everything goes through ``AdminClient``.
"""

from admin.client import AdminClient, AdminError, ExitCode

__all__ = ["AdminClient", "AdminError", "ExitCode"]
