"""What every command shares: the chosen profile, the output mode, and the API client."""

from dataclasses import dataclass, field

import typer
from rich.console import Console

from kernex_cli.api import Api
from kernex_cli.profiles import resolve
from kernex_cli.render import Output


@dataclass(slots=True)
class Session:
    """Made by the top-level callback; the API client is opened on first use."""

    profile: str | None
    as_json: bool
    console: Console = field(default_factory=lambda: Console(highlight=False))
    _api: Api | None = None

    @property
    def out(self) -> Output:
        """Where results go."""
        return Output(self.as_json, self.console)

    @property
    def api(self) -> Api:
        """The signed-in client (NotSignedIn if there is no URL or key)."""
        if self._api is None:
            self._api = Api(resolve(self.profile))
        return self._api


def session(ctx: typer.Context) -> Session:
    """The current command's session."""
    found = ctx.find_object(Session)
    assert found is not None, "the top-level callback makes the session"
    return found
