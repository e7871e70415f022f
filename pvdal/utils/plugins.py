"""Optional Hydra plugins (sweep launchers, sweepers): a clear message when one is missing.

Hydra composes a launcher preset without importing the plugin and only fails when it
instantiates the launcher ("Unknown plugin class ..."), which never says what to install. The
presets under ``conf/hydra/launcher/`` therefore also register ``RequirePlugin`` as a Hydra
callback: ``on_multirun_start`` runs before the launcher is built, so a missing plugin ends the
sweep with one line naming the pip extra (exit code 2) and nothing is launched.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from hydra.experimental.callback import Callback

from pvdal.utils.errors import ConfigError


def plugin_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_plugin(module: str, extra: str, what: str = "") -> None:
    """Raise ``ConfigError`` naming ``pip install -e ".[extra]"`` when ``module`` is missing."""
    if not plugin_available(module):
        raise ConfigError(what or module, f"needs the Hydra plugin '{module}', not installed",
                          f'pip install -e ".[{extra}]"')


class RequirePlugin(Callback):
    """Hydra callback: check ``module`` before a multirun launches anything."""

    def __init__(self, module: str, extra: str, what: str = "") -> None:
        self.module, self.extra, self.what = module, extra, what

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            require_plugin(self.module, self.extra, self.what)
        except ConfigError as e:
            # Hydra turns exceptions raised by callbacks into warnings; exit instead.
            print(f"pvdal: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
