"""What every `fedtune admin` command shares: global options, the client, output, error mapping."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
from rich.console import RenderableType

from admin import render
from admin.client import AdminClient, AdminError
from fedtune.tls import ClientTls

T = TypeVar("T")


class AdminGroup(click.Group):
    """A group whose commands' `AdminError`s end the process: `Error: <one line>` on stderr, exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdminError as err:
            click.echo(f"Error: {err.message}", err=True)
            ctx.exit(err.exit_code)


@dataclass
class AdminContext:
    """The global options; the client is made (and closed with the command) on first use."""

    target: str
    admin_token: str | None
    timeout: float
    json_output: bool
    tls: ClientTls | None = None
    _client: AdminClient | None = field(default=None, repr=False)

    def client(self) -> AdminClient:
        if self._client is None:
            self._client = AdminClient(self.target, self.admin_token, self.timeout, self.tls)
            click.get_current_context().call_on_close(self._client.close)
        return self._client

    def output(self, document: Any, *human: RenderableType) -> None:
        """Print `document` as one JSON document with `--json`, else the human renderables."""
        if self.json_output:
            click.echo(render.dump_json(document))
            return
        console = render.make_console()
        for item in human:
            console.print(item)

    def output_list(
        self, key: str, items: Sequence[T], table: Callable[[Sequence[T]], RenderableType], empty: str
    ) -> None:
        """A listing: `{key: [...]}` with `--json`, else `table(items)`, or the `empty` hint for none."""
        human = table(items) if items else render.plain(empty)
        self.output({key: [render.to_jsonable(item) for item in items]}, human)


pass_admin = click.make_pass_decorator(AdminContext)
