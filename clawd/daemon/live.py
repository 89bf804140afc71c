"""Live reload: the settings in force, fanned out to every component in the list's order."""

from __future__ import annotations

from collections.abc import Sequence

from clawd.config.settings import Settings
from clawd.core.logs import configure_logging
from clawd.daemon.component import Component, changed_set


class Live:
    """Holds the settings in force; `apply` is the Reloader's way to put new ones in force."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.components: Sequence[Component] = ()

    async def apply(self, new: Settings, changed_keys: list[str]) -> None:
        self.settings = new
        changed = changed_set(changed_keys)
        if "log" in changed:  # the process's logging, not a component's
            configure_logging(new.log.level, home=new.home)
        for component in self.components:
            await component.reconfigure(new, changed)
