"""The registry of stages ``hostgate run <stage>`` can start.

Each entry names a factory ``build_stage(env) -> Stage`` by module path, imported only when that
stage is run (so a stage's dependencies load only in its own workers). Stages register here as
they land: collector, verifier, issuer, incidents. Only the product's stages are registered
(``topics.STAGES``); a test stage runs through ``run_cli.serve(config, stage)`` from its own
module (``tests/support/eostest.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from services.errors import ConfigError
from services.runtime.stage import Stage

STAGE_FACTORIES: Mapping[str, str] = {
    "incidents": "services.incidents.stage:build_stage",
    "collector": "services.collector.stage:build_stage",
    "verifier": "services.verifier.stage:build_stage",
    "issuer": "services.issuer.stage:build_stage",
}


def build_stage(name: str, env: Mapping[str, str]) -> Stage:
    """Build the stage called ``name``; ``ConfigError`` if there is none."""
    try:
        target = STAGE_FACTORIES[name]
    except KeyError:
        known = ", ".join(sorted(STAGE_FACTORIES))
        raise ConfigError(f"no stage called {name!r} (known: {known})") from None
    module_name, _, attr = target.partition(":")
    factory: Callable[[Mapping[str, str]], Stage] = getattr(
        importlib.import_module(module_name), attr)
    stage = factory(env)
    if stage.name != name:
        raise ConfigError(f"factory {target} built stage {stage.name!r}, not {name!r}")
    return stage
