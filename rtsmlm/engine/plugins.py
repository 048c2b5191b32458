"""The plugin API: feedback and analysis code that runs on the live localization stream.

A plugin is a :class:`~rtsmlm.engine.listener.Listener` (any of its optional hooks: ``on_run_start``,
``on_batch``, ``on_truth``, ``on_stats``, ``on_tick``, ``on_run_end``) built with its config table. The engine runs
each plugin on its own thread under the watchdog (``pipeline.hook_timeout_s`` per call).
Plugins are named in ``config.toml``::

    [plugins.activation_feedback]        # loads plugins/activation_feedback.py
    target_locs_per_frame = 10

    [plugins.feedback_561]               # a second instance of the same module
    module = "activation_feedback"
    device = "561nm"

Reserved keys of a ``[plugins.NAME]`` table (everything else is the plugin's own config):

* ``module`` — where the class lives; default ``NAME``. A path ending in ``.py`` is loaded from that
  file (relative to the config file's directory, else the working directory); a bare name is looked up
  as ``plugins/<module>.py`` in the search directories (:func:`default_search_dirs`), then as an
  entry point of the ``rtsmlm.plugins`` group, then as an importable module.
* ``class`` — the class name in that module; default: the module's ``PLUGIN`` attribute, else the one
  class defined in the module that has a hook.
* ``enabled`` — false skips the table without removing it.
* ``config_dir`` — set by :func:`rtsmlm.core.config.load` to the folder of the config file that holds the
  table: ``plugins/`` there is searched first.

Installed entry points (group ``rtsmlm.plugins``, ``NAME = "package.module:Class"``) are loaded only
when a ``[plugins.NAME]`` table names them: a plugin that drives lasers must be switched on on purpose.

A plugin that cannot be found or built is a configuration error (:class:`PluginError`, before the
acquisition starts). A hook that raises disables that plugin with a logged traceback; the acquisition
and the other plugins continue.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Mapping

from rtsmlm.core.errors import RtsmlmError
from rtsmlm.core.locs import LocBatch
from rtsmlm.engine.listener import HOOKS, LEGACY_HOOKS, RunEnd, RunStart, hooks_of, run_end_argument
from rtsmlm.engine.watchdog import HookCaller, log_plugin_disabled

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rtsmlm.plugins"
RESERVED_KEYS = ("module", "class", "enabled", "config_dir")
# Files loaded from plugins/ directories live under this package name, so they cannot shadow (or be
# shadowed by) an installed top-level "plugins" package.
_FILE_MODULE_PREFIX = "rtsmlm_plugins"


class PluginError(RtsmlmError, ValueError):
    """A ``[plugins.NAME]`` table names a plugin that cannot be found, loaded or built."""


RunInfo = RunStart
"""The name plugins written before :class:`~rtsmlm.engine.listener.Listener` import (same class)."""


@dataclass
class PluginState:
    """Bookkeeping of one loaded plugin inside :class:`PluginHost`."""

    name: str
    instance: Any
    origin: str
    caller: HookCaller
    hooks: dict[str, tuple[str, Any]] = field(default_factory=dict)
    active: bool = True
    error: str | None = None


class PluginHost:
    """The plugins a config names, loaded and built (:meth:`from_config`).

    A run hands each one to its own :class:`~rtsmlm.engine.relay.ListenerRelay`. Without a run (tests,
    scripts, benchmarks) the host drives them itself, in order, on the calling thread, with the same
    watchdog: :meth:`start`, :meth:`localizations` per batch, :meth:`stats`, :meth:`stop`.
    """

    DEFAULT_HOOK_TIMEOUT_S = 5.0

    def __init__(self, plugins: Iterable[tuple[str, Any]] = (), *,
                 hook_timeout_s: float = DEFAULT_HOOK_TIMEOUT_S) -> None:
        self._plugins: list[PluginState] = []
        self.hook_timeout_s = float(hook_timeout_s)
        for name, instance in plugins:
            self.add(name, instance)

    @classmethod
    def from_config(cls, plugins_cfg: Any, *, config_dir: str | Path | None = None,
                    search_dirs: Iterable[str | Path] | None = None) -> "PluginHost":
        """Load every enabled ``[plugins.NAME]`` table (a :class:`~rtsmlm.core.config.Config` or its
        ``plugins`` dict). Raises :class:`PluginError` naming the table when one cannot be loaded."""
        tables = getattr(plugins_cfg, "plugins", plugins_cfg)
        pipeline_cfg = getattr(plugins_cfg, "pipeline", None)
        host = cls(hook_timeout_s=getattr(pipeline_cfg, "hook_timeout_s", cls.DEFAULT_HOOK_TIMEOUT_S))
        for name, table in (tables or {}).items():
            if not isinstance(table, Mapping):
                raise PluginError(f"[plugins.{name}] must be a table, got {table!r}")
            enabled = table.get("enabled", True)
            if not isinstance(enabled, bool):
                raise PluginError(f"[plugins.{name}] enabled must be true or false, got {enabled!r}")
            if not enabled:
                log.info("plugin %s is disabled in the config", name)
                continue
            plugin_cls, origin = load_plugin_class(name, table, config_dir=config_dir or table.get("config_dir"),
                                                   search_dirs=search_dirs)
            own = {k: v for k, v in table.items() if k not in RESERVED_KEYS}
            instance = _instantiate(name, plugin_cls, own)
            host.add(name, instance, origin=origin)
        return host

    def add(self, name: str, instance: Any, origin: str = "") -> None:
        """Register an already-built plugin object (tests, scripts)."""
        hooks = hooks_of(instance)
        if not hooks:
            raise PluginError(f"plugin {name!r} ({type(instance).__name__}) defines none of the hooks "
                              f"{', '.join(HOOKS)}")
        if any(p.name == name for p in self._plugins):
            raise PluginError(f"two plugins are named {name!r}")
        self._plugins.append(PluginState(name, instance, origin or type(instance).__module__,
                                         HookCaller(name, self.hook_timeout_s), hooks))

    @property
    def loaded(self) -> list[tuple[str, Any, str]]:
        """(name, plugin object, where it came from) of every plugin, in config order."""
        return [(p.name, p.instance, p.origin) for p in self._plugins]

    # -- driving the plugins without a run -------------------------------------------------------------

    def start(self, run: RunStart) -> None:
        """Call ``on_run_start(run)`` on every plugin."""
        self._call("on_run_start", run)

    def localizations(self, batch: LocBatch) -> None:
        """Call ``on_batch(batch)`` on every active plugin."""
        self._call("on_batch", batch)

    def stats(self, stats: dict[str, Any]) -> None:
        """Call ``on_stats(stats)`` on every active plugin."""
        self._call("on_stats", stats)

    def stop(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Call ``on_run_end`` on every active plugin; return :meth:`report`."""
        self._call("on_run_end", RunEnd(summary))
        for p in self._plugins:
            p.caller.close()
        return self.report()

    # -- inspection --------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [p.name for p in self._plugins]

    @property
    def active(self) -> list[str]:
        return [p.name for p in self._plugins if p.active]

    def __len__(self) -> int:
        return len(self._plugins)

    def instance(self, name: str) -> Any:
        """The plugin object registered as ``name``."""
        for p in self._plugins:
            if p.name == name:
                return p.instance
        raise KeyError(f"no plugin named {name!r}; loaded: {', '.join(self.names) or 'none'}")

    def report(self) -> dict[str, Any]:
        """Per plugin: :func:`plugin_report`."""
        return {p.name: plugin_report(p.instance, p.origin, p.active, p.error, p.caller.calls, p.caller.time_s)
                for p in self._plugins}

    def _call(self, hook: str, arg: Any) -> None:
        """Call ``hook`` on every active plugin under the watchdog: a hook that raises (anything,
        ``SystemExit`` included) or overruns ``hook_timeout_s`` disables its plugin with one logged line."""
        for p in self._plugins:
            if not p.active or hook not in p.hooks:
                continue
            own_name, fn = p.hooks[hook]
            p.caller.timeout_s = self.hook_timeout_s
            outcome = p.caller.call(fn, run_end_argument(own_name, arg) if hook == "on_run_end" else arg)
            if outcome.ok:
                continue
            p.active = False
            p.error = f"{own_name}: {outcome.error}"
            log_plugin_disabled(p.name, own_name, outcome)


def plugin_report(instance: Any, origin: str, active: bool, error: str | None, calls: int,
                  time_s: float) -> dict[str, Any]:
    """A plugin's entry in the run summary (``plugins.NAME``): origin, whether it is still active, the
    error that disabled it, hook calls and time spent in hooks, and its own ``report()`` when it has one."""
    entry: dict[str, Any] = {"origin": origin, "active": active, "error": error, "calls": calls,
                             "time_s": round(time_s, 6)}
    own = getattr(instance, "report", None)
    if callable(own):
        try:
            entry["report"] = own()
        except Exception as e:  # a broken report must not cost the run summary
            entry["report"] = f"report() raised {type(e).__name__}: {e}"
    return entry


# --------------------------------------------------------------------------------------------------
# Loading

def default_search_dirs(config_dir: str | Path | None = None) -> list[Path]:
    """Where ``plugins/<name>.py`` is looked for, in order: next to the config file, the working
    directory, then the project checkout this package runs from (the shipped plugins)."""
    dirs = []
    if config_dir is not None:
        dirs.append(Path(config_dir) / "plugins")
    dirs.append(Path.cwd() / "plugins")
    dirs.append(Path(__file__).resolve().parent.parent.parent / "plugins")
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def load_plugin_class(name: str, table: Mapping[str, Any] | None = None, *,
                      config_dir: str | Path | None = None,
                      search_dirs: Iterable[str | Path] | None = None) -> tuple[type, str]:
    """Resolve ``[plugins.NAME]`` to its class; returns (class, where it came from)."""
    table = table or {}
    module_key = table.get("module", name)
    class_key = table.get("class")
    if not isinstance(module_key, str) or not module_key:
        raise PluginError(f"[plugins.{name}] module must be a non-empty string, got {module_key!r}")
    if class_key is not None and not isinstance(class_key, str):
        raise PluginError(f"[plugins.{name}] class must be a string, got {class_key!r}")
    dirs = [Path(d) for d in search_dirs] if search_dirs is not None else default_search_dirs(config_dir)

    if module_key.endswith(".py") or "/" in module_key or "\\" in module_key:
        path = Path(module_key).expanduser()
        if not path.is_absolute():
            path = Path(config_dir or Path.cwd()) / path
        if not path.is_file():
            raise PluginError(f"[plugins.{name}] module file {path} does not exist")
        module = _load_file(path)
        return _pick_class(name, module, class_key), str(path)

    if module_key.isidentifier():
        for d in dirs:
            path = d / f"{module_key}.py"
            if path.is_file():
                module = _load_file(path)
                return _pick_class(name, module, class_key), str(path)

    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == module_key:
            try:
                obj = ep.load()
            except Exception as e:
                raise PluginError(f"[plugins.{name}] entry point {ep.value!r} of group {ENTRY_POINT_GROUP} "
                                  f"failed to import: {type(e).__name__}: {e}") from e
            if isinstance(obj, ModuleType):
                return _pick_class(name, obj, class_key), f"entry point {ep.value}"
            if class_key is not None and getattr(obj, "__name__", None) != class_key:
                raise PluginError(f"[plugins.{name}] entry point {ep.value!r} is {obj!r}, not class "
                                  f"{class_key!r}")
            if not inspect.isclass(obj):
                raise PluginError(f"[plugins.{name}] entry point {ep.value!r} is not a class or module")
            return obj, f"entry point {ep.value}"

    try:
        module = importlib.import_module(module_key)
    except ModuleNotFoundError as e:
        if e.name and module_key.startswith(e.name):  # the module itself is missing, not one it imports
            searched = ", ".join(str(d) for d in dirs)
            raise PluginError(f"[plugins.{name}]: no plugin {module_key!r} found: not in plugins/ "
                              f"directories ({searched}), not an entry point of group {ENTRY_POINT_GROUP}, "
                              f"not an importable module") from None
        raise PluginError(f"[plugins.{name}] module {module_key!r} failed to import: {e}") from e
    except Exception as e:
        raise PluginError(f"[plugins.{name}] module {module_key!r} failed to import: "
                          f"{type(e).__name__}: {e}") from e
    return _pick_class(name, module, class_key), module.__name__


def load_plugin_module(name: str, *, config_dir: str | Path | None = None,
                       search_dirs: Iterable[str | Path] | None = None) -> ModuleType:
    """Import ``plugins/<name>.py`` from the search directories (or the file ``name`` when it is a
    path), e.g. to reuse a shipped plugin's classes in a script or benchmark."""
    if name.endswith(".py") or "/" in name or "\\" in name:
        path = Path(name).expanduser()
        if not path.is_absolute():
            path = Path(config_dir or Path.cwd()) / path
        if not path.is_file():
            raise PluginError(f"plugin file {path} does not exist")
        return _load_file(path)
    dirs = [Path(d) for d in search_dirs] if search_dirs is not None else default_search_dirs(config_dir)
    for d in dirs:
        if (d / f"{name}.py").is_file():
            return _load_file(d / f"{name}.py")
    raise PluginError(f"no plugin file {name}.py in {', '.join(str(d) for d in dirs)}")


def _load_file(path: Path) -> ModuleType:
    """Import a plugin file as ``rtsmlm_plugins.<stem>`` (reused when the same file was loaded)."""
    mod_name = f"{_FILE_MODULE_PREFIX}.{path.stem}"
    existing = sys.modules.get(mod_name)
    if existing is not None and Path(getattr(existing, "__file__", "")).resolve() == path.resolve():
        return existing
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for non-.py paths
        raise PluginError(f"plugin file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise PluginError(f"plugin file {path} failed to import: {type(e).__name__}: {e}") from e
    return module


def _pick_class(name: str, module: ModuleType, class_key: str | None) -> type:
    where = getattr(module, "__file__", None) or module.__name__
    if class_key is not None:
        cls = getattr(module, class_key, None)
        if not inspect.isclass(cls):
            raise PluginError(f"[plugins.{name}] class {class_key!r} is not defined in {where}")
        return cls
    declared = getattr(module, "PLUGIN", None)
    if declared is not None:
        if not inspect.isclass(declared):
            raise PluginError(f"[plugins.{name}] {where}: PLUGIN must be a class, got {declared!r}")
        return declared
    candidates = [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                  if obj.__module__ == module.__name__ and any(callable(getattr(obj, h, None)) for h in (*HOOKS, *LEGACY_HOOKS))]
    if len(candidates) != 1:
        found = ", ".join(c.__name__ for c in candidates) or "none"
        raise PluginError(f"[plugins.{name}] {where} defines {len(candidates)} plugin classes ({found}); "
                          f"set PLUGIN = <class> in the module or class = \"...\" in the table")
    return candidates[0]


def _instantiate(name: str, cls: type, config: dict[str, Any]) -> Any:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = {"config": None}  # type: ignore[assignment]
    if not params and config:
        raise PluginError(f"[plugins.{name}] {cls.__name__} takes no settings but the table sets "
                          f"{', '.join(sorted(config))}")
    try:
        return cls(config) if params else cls()
    except PluginError:
        raise
    except Exception as e:
        # Bad plugin settings are configuration errors: say which table, before anything runs.
        raise PluginError(f"[plugins.{name}] {cls.__name__} could not be built: {type(e).__name__}: {e}") \
            from e
