"""Env registry: configs and the CLI name tasks by string, e.g. "robosuite/Lift" or "tabletop/pick".

    env = make_env("robosuite/Lift", images=True, image_size=84)
    expert = make_expert("robosuite/Lift", env)

Every env follows the gymnasium API (`reset(seed=...)`, `step(action)`) with observation keys that
are dataset feature names and `info["is_success"]`; each has a `task` string (its instruction) and
a `features` dict in LeRobot's format, so a collector can create a dataset without knowing the env.

Your own envs: put `register(...)` calls in a module and name it in the environment variable
ROBOPOLICY_PLUGINS (comma-separated module names). The registry imports those modules too — in
every process, including the spawned collection and evaluation workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from robopolicy.errors import EnvError


@dataclass(frozen=True)
class EnvEntry:
    name: str
    make: Callable[..., object]
    expert: Callable[[object], object] | None  # None: no scripted expert (no collect, no DAgger)
    description: str


_REGISTRY: dict[str, EnvEntry] = {}
_loaded = False


def register(name: str, make: Callable[..., object], expert: Callable[[object], object] | None,
             description: str) -> None:
    _REGISTRY[name] = EnvEntry(name, make, expert, description)


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    import importlib
    import os

    try:
        from robopolicy.sim import robosuite_env  # noqa: F401  (registers robosuite/*)
        from robopolicy.sim import tabletop  # noqa: F401  (registers tabletop/*)
    except ImportError as err:
        raise EnvError(f"simulation needs MuJoCo and robosuite (pip install -e '.[sim]'): {err}") from None
    _loaded = True

    for module in filter(None, (m.strip() for m in os.environ.get("ROBOPOLICY_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise EnvError(f"ROBOPOLICY_PLUGINS names {module!r}, which cannot be imported: {err}") from None


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
    return entry(name).make(**kwargs)


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
    return require_expert(name).expert(env)
