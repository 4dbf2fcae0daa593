"""Env registry: configs and the CLI name tasks by string, e.g. "robosuite/Lift" or "tabletop/pick".

    env = make_env("robosuite/Lift", images=True, image_size=84)
    expert = make_expert("robosuite/Lift", env)

Every env follows the gymnasium API (`reset(seed=...)`, `step(action)`) with observation keys that
are dataset feature names and `info["is_success"]`; each has a `task` string (its instruction) and
a `features` dict in LeRobot's format, so a collector can create a dataset without knowing the env.

Built-in envs are registered by "module:attribute" entry points, so listing them imports no
simulator: robosuite is imported when a robosuite env is made, and the tabletop tasks work
without it. Your own envs: put `register(...)` calls in a module and name it in the environment
variable ROBOPOLICY_PLUGINS (comma-separated module names). The registry imports those modules
too — in every process, including the spawned collection and evaluation workers.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any

from robopolicy.errors import EnvError


@dataclass(frozen=True)
class EnvEntry:
    name: str
    make: Any  # entry point of the env class or factory
    expert: Any | None  # entry point of the expert factory (called with the env); None: no expert
    description: str
    kwargs: dict = field(default_factory=dict)  # passed to `make` before the caller's own


_REGISTRY: dict[str, EnvEntry] = {}
_loaded = False

_ROBOSUITE = "robopolicy.sim.robosuite_env:RobosuiteEnv"
_ROBOSUITE_EXPERT = "robopolicy.sim.robosuite_experts:expert_for"
_TABLETOP = "robopolicy.sim.tabletop:TabletopEnv"
_TABLETOP_EXPERT = "robopolicy.sim.tabletop_expert:TabletopExpert"
_CUBES = "MuJoCo gantry gripper, cubes and a bowl"
BUILTIN = [
    ("robosuite/Lift", _ROBOSUITE, _ROBOSUITE_EXPERT, "robosuite Lift with a Panda arm: lift the cube", {"task": "Lift"}),
    ("robosuite/Stack", _ROBOSUITE, _ROBOSUITE_EXPERT, "robosuite Stack with a Panda arm: stack one cube on the other",
     {"task": "Stack"}),
    ("robosuite/PickPlaceCan", _ROBOSUITE, _ROBOSUITE_EXPERT, "robosuite PickPlaceCan with a Panda arm: the can into"
     " its bin", {"task": "PickPlaceCan"}),
    ("robosuite/NutAssemblySquare", _ROBOSUITE, _ROBOSUITE_EXPERT, "robosuite NutAssemblySquare with a Panda arm: the"
     " square nut onto its peg", {"task": "NutAssemblySquare"}),
    ("tabletop/pick", _TABLETOP, _TABLETOP_EXPERT, f"{_CUBES}: put the {{red|green|blue}} cube in the bowl",
     {"task": "pick"}),
    ("tabletop/push", _TABLETOP, _TABLETOP_EXPERT, f"{_CUBES}: push the {{red|green|blue}} cube to the {{left|right}}",
     {"task": "push"}),
    ("tabletop/mixed", _TABLETOP, _TABLETOP_EXPERT, f"{_CUBES}: pick-into-bowl and push instructions, one per episode",
     {"task": "mixed"}),
]


def register(name: str, make, expert, description: str, **kwargs) -> None:
    """Add an env. `make` and `expert` are "module:attribute" entry points, imported only when the
    env is made (gymnasium's pattern), or callables; `kwargs` go to `make` with every call."""
    _REGISTRY[name] = EnvEntry(name, make, expert, description, dict(kwargs))


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name, make, expert, description, kwargs in BUILTIN:
        register(name, make, expert, description, **kwargs)
    for module in filter(None, (m.strip() for m in os.environ.get("ROBOPOLICY_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise EnvError(f"ROBOPOLICY_PLUGINS names {module!r}, which cannot be imported: {err}") from None


def _resolve(name: str, ref):
    if callable(ref):
        return ref
    module, _, attribute = str(ref).partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except ImportError as err:
        raise EnvError(f"env {name!r} needs a package that is not installed ({err});"
                       f" the simulation extra installs MuJoCo and robosuite: pip install -e '.[sim]'") from None


def env_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def entry(name: str) -> EnvEntry:
    _load_builtin()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EnvError(f"unknown env {name!r}{hint}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make_env(name: str, **kwargs):
    found = entry(name)
    return _resolve(name, found.make)(**{**found.kwargs, **kwargs})


def require_expert(name: str) -> EnvEntry:
    """The env's entry, or a clear error when it has no scripted expert."""
    found = entry(name)
    if found.expert is None:
        with_expert = sorted(n for n, e in _REGISTRY.items() if e.expert is not None)
        raise EnvError(f"env {name!r} has no scripted expert (its register() call passed expert=None);"
                       f" envs with one: {', '.join(with_expert)}")
    return found


def make_expert(name: str, env):
    """The env's scripted expert: it acts from any state of `env` (`reset()`, then `act(obs)` each step)."""
    return _resolve(name, require_expert(name).expert)(env)
