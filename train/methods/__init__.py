"""Methods: SSPrompt and the baselines, one module each, registered by name (registry.py says how
to add one and what a method may change).

Importing this package registers the built-in methods, then every plug-in named by an entry point
of the group `ssprompt.methods` (a module that registers its method when imported).
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points

# Registration order is the order ssp-train lists them in.
from . import ssprompt, zero_shot, coop, vspl  # noqa: F401, I001 - imported to register

PLUGIN_GROUP = "ssprompt.methods"


def _load_plugins() -> None:
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()
        except Exception as err:  # noqa: BLE001 - a broken plug-in must not take the built-in methods down
            warnings.warn(f"method plug-in {entry.name} ({entry.value}) did not load: {type(err).__name__}: {err}",
                          stacklevel=2)


_load_plugins()
