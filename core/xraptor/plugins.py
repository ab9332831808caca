"""The plugin manager: built-in plugins, entry-point discovery and lookup by name.

Antennas are also looked up by URL scheme: each antenna class declares the schemes
it accepts (``schemes``, default ``(name,)``); the core knows no scheme of its own.

Plugins are distributions that declare ``[project.entry-points.xraptor]``. Each
entry point is loaded on its own: one that fails is logged with its distribution
and version and the others still load. ``XRAPTOR_DISABLE_PLUGINS`` (a comma
separated list of entry-point or distribution names) blocks plugins.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pluggy

from . import hookspecs

if TYPE_CHECKING:
    from .antenna import Antenna
    from .guards import GuardFactory
    from .middleware import MiddlewareFunc
    from .transport import Listen

logger = logging.getLogger("xraptor.plugins")

T = TypeVar("T")

_HOOK_NAMES = sorted(name for name in vars(hookspecs) if name.startswith("xraptor_"))

ENTRY_POINT_GROUP = "xraptor"
BUILTIN = "xraptor (built-in)"


@dataclass
class PluginInfo:
    """What ``xraptor plugins`` shows about one plugin."""

    name: str
    distribution: str
    version: str
    antennas: list[str] = field(default_factory=list)
    #: the URL schemes this plugin's antennas claimed (``antennas``: the names)
    schemes: list[str] = field(default_factory=list)
    middlewares: list[str] = field(default_factory=list)
    guards: list[str] = field(default_factory=list)
    transports: list[str] = field(default_factory=list)
    error: str | None = None


class _UnknownName(KeyError):
    """A lookup by name that no installed plugin answers; says what exists."""

    kind = "entry"

    def __init__(self, name: str, installed: list[str]) -> None:
        self.name = name
        self.installed = installed
        super().__init__(name)

    def advice(self) -> str:
        return "xraptor plugins lists what is installed"

    def __str__(self) -> str:
        return (
            f"unknown {self.kind} {self.name!r}; installed {self.kind}s: "
            f"{', '.join(sorted(self.installed)) or 'none'}. {self.advice()}"
        )


class UnknownAntennaError(_UnknownName):
    """No installed plugin offers an antenna of that name."""

    kind = "antenna"

    def advice(self) -> str:
        return f"To add it, pip install xraptor-{self.name}"


class UnknownSchemeError(UnknownAntennaError):
    """No installed antenna accepts URLs of that scheme (an :class:`UnknownAntennaError`).

    ``scheme`` (also ``name``) is the scheme, ``installed`` the schemes that are known.
    """

    kind = "antenna URL scheme"

    @property
    def scheme(self) -> str:
        return self.name

    def advice(self) -> str:
        return (
            f"Install the plugin whose antenna accepts {self.name}:// URLs (the first-party "
            "plugins are xraptor-redis and xraptor-nats); xraptor plugins lists the installed "
            "plugins with their schemes"
        )

    def __str__(self) -> str:
        known = ", ".join(f"{scheme}://" for scheme in sorted(self.installed)) or "none"
        return (
            f"no installed antenna accepts {self.name}:// URLs; known schemes: {known}. "
            f"{self.advice()}"
        )


class UnknownMiddlewareError(_UnknownName):
    """No installed plugin offers a middleware of that name."""

    kind = "middleware"

    def advice(self) -> str:
        return "Install the plugin that offers it (xraptor plugins lists what is found)"


class UnknownGuardError(_UnknownName):
    """No installed plugin offers a connect guard of that name."""

    kind = "guard"

    def advice(self) -> str:
        return "Install the plugin that offers it (xraptor plugins lists what is found)"


class UnknownTransportError(_UnknownName):
    """No installed plugin offers a listening transport of that name."""

    kind = "transport"

    def advice(self) -> str:
        return (
            f"Install the plugin that offers it (xraptor-{self.name} for a first-party one); "
            "xraptor plugins lists what is found"
        )


class _Registry(Generic[T]):
    """Named entries, each remembered with the plugin that offered it."""

    kind = "entry"

    def __init__(self) -> None:
        self._entries: dict[str, T] = {}
        self._owner: dict[str, str] = {}
        self.current_plugin = BUILTIN

    def _put(self, name: str, entry: T) -> None:
        if name in self._entries and self._entries[name] is not entry:
            logger.warning(
                "%s %r from %s replaces the one from %s",
                self.kind,
                name,
                self.current_plugin,
                self._owner[name],
            )
        self._entries[name] = entry
        self._owner[name] = self.current_plugin

    def names(self) -> list[str]:
        return sorted(self._entries)

    def owned_by(self, plugin: str) -> list[str]:
        return sorted(n for n, owner in self._owner.items() if owner == plugin)

    def remove_owned(self, plugin: str) -> None:
        for name in self.owned_by(plugin):
            del self._entries[name], self._owner[name]


#: RFC 3986: ``scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )``, compared lower-case
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def _declared_schemes(antenna_class: type[Antenna]) -> tuple[str, ...]:
    """``antenna_class.schemes``, checked and lower-cased, without repeats."""
    declared: object = antenna_class.schemes
    if isinstance(declared, str) or not isinstance(declared, tuple | list):
        raise TypeError(
            f"{antenna_class.__name__}.schemes must be a tuple of str, "
            f"e.g. ({declared!r},), got {type(declared).__name__}"
        )
    schemes: list[str] = []
    for scheme in declared:
        if not (isinstance(scheme, str) and scheme.isascii() and _SCHEME.fullmatch(scheme.lower())):
            raise ValueError(
                f"{antenna_class.__name__}.schemes: {scheme!r} is not a URL scheme "
                "(a letter, then letters, digits, '+', '-' or '.'; without '://')"
            )
        if scheme.lower() not in schemes:
            schemes.append(scheme.lower())
    return tuple(schemes)


class AntennaRegistry(_Registry[type["Antenna"]]):
    """Handed to ``xraptor_register_antennas``: ``registry.add(AntennaClass)``.

    Antennas are found by name and by URL scheme. As for names, a scheme that a
    later plugin claims too goes to the later one, and the replacement is logged.
    """

    kind = "antenna"

    def __init__(self) -> None:
        super().__init__()
        self._schemes: dict[str, type[Antenna]] = {}
        self._scheme_owner: dict[str, str] = {}

    def add(self, antenna_class: type[Antenna]) -> None:
        from .antenna import Antenna

        if not (isinstance(antenna_class, type) and issubclass(antenna_class, Antenna)):
            raise TypeError(f"{antenna_class!r} is not a subclass of xraptor.Antenna")
        name = antenna_class.name
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"{antenna_class.__name__} must set a non-empty `name` class attribute"
            )
        schemes = _declared_schemes(antenna_class)  # checked first: a bad class adds nothing
        self._put(name, antenna_class)
        for scheme in schemes:
            previous = self._schemes.get(scheme)
            if previous is not None and previous is not antenna_class:
                logger.warning(
                    "antenna URL scheme %r from %s (antenna %r) replaces the one from %s "
                    "(antenna %r)",
                    scheme,
                    self.current_plugin,
                    name,
                    self._scheme_owner[scheme],
                    previous.name,
                )
            self._schemes[scheme] = antenna_class
            self._scheme_owner[scheme] = self.current_plugin

    def get(self, name: str) -> type[Antenna]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownAntennaError(name, list(self._entries)) from None

    def for_scheme(self, scheme: str) -> type[Antenna]:
        """The antenna class that accepts ``<scheme>://`` URLs (compared lower-case).

        :raises UnknownSchemeError: when no installed antenna claims the scheme
        """
        try:
            return self._schemes[scheme.lower()]
        except KeyError:
            raise UnknownSchemeError(scheme.lower(), list(self._schemes)) from None

    def schemes(self) -> list[str]:
        """Every URL scheme some installed antenna accepts."""
        return sorted(self._schemes)

    def schemes_owned_by(self, plugin: str) -> list[str]:
        return sorted(s for s, owner in self._scheme_owner.items() if owner == plugin)

    def remove_owned(self, plugin: str) -> None:
        super().remove_owned(plugin)
        for scheme in self.schemes_owned_by(plugin):
            del self._schemes[scheme], self._scheme_owner[scheme]


MiddlewareFactory = Callable[..., "MiddlewareFunc"]


class MiddlewareRegistry(_Registry[MiddlewareFactory]):
    """Handed to ``xraptor_register_middlewares``: ``registry.add(name, factory)``.

    ``factory(**options)`` returns a middleware coroutine function
    ``(request, connection) -> Response | None``.
    """

    kind = "middleware"

    def add(self, name: str, factory: MiddlewareFactory) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a middleware name must be a non-empty str")
        if not callable(factory):
            raise TypeError(f"middleware factory for {name!r} is not callable")
        self._put(name, factory)

    def get(self, name: str) -> MiddlewareFactory:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownMiddlewareError(name, list(self._entries)) from None


class GuardRegistry(_Registry["GuardFactory"]):
    """Handed to ``xraptor_register_guards``: ``registry.add(name, factory)``.

    ``factory(**options)`` returns a connect guard, an async function
    ``(handshake) -> identity`` that may raise :class:`~xraptor.Refuse`.
    """

    kind = "guard"

    def add(self, name: str, factory: GuardFactory) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a guard name must be a non-empty str")
        if not callable(factory):
            raise TypeError(f"guard factory for {name!r} is not callable")
        self._put(name, factory)

    def get(self, name: str) -> GuardFactory:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownGuardError(name, list(self._entries)) from None


class TransportRegistry(_Registry["Listen"]):
    """Handed to ``xraptor_register_transports``: ``registry.add(name, listen)``.

    ``listen(app, options)`` binds and returns a listener (see :mod:`xraptor.transport`).
    """

    kind = "transport"

    def add(self, name: str, listen: Listen) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a transport name must be a non-empty str")
        if not callable(listen):
            raise TypeError(f"the listen function of transport {name!r} is not callable")
        self._put(name, listen)

    def get(self, name: str) -> Listen:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownTransportError(name, list(self._entries)) from None


class Plugins:
    """The loaded plugins of this process and what they offer."""

    def __init__(self, *, discover: bool = True) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.antennas = AntennaRegistry()
        self.middlewares = MiddlewareRegistry()
        self.guards = GuardRegistry()
        self.transports = TransportRegistry()
        self.info: dict[str, PluginInfo] = {}
        # the built-in memory antenna and websockets transport register through the same
        # hooks as installed plugins
        import xraptor.antennas.memory as memory_plugin
        import xraptor.websocket_transport as websockets_plugin

        self._add("memory", memory_plugin, PluginInfo("memory", BUILTIN, _core_version()))
        self._add(
            "websockets", websockets_plugin, PluginInfo("websockets", BUILTIN, _core_version())
        )
        if discover:
            self._discover()

    def register(self, plugin: object, name: str, distribution: str = "(in-process)") -> None:
        """Register a plugin object or module in-process (tests, applications)."""
        self._add(name, plugin, PluginInfo(name, distribution, ""))

    def unregister(self, name: str) -> None:
        """Remove an in-process plugin and what it offered."""
        plugin = self.manager.get_plugin(name)
        if plugin is not None:
            self.manager.unregister(plugin, name=name)
        self._remove_owned(name)
        self.info.pop(name, None)

    def _remove_owned(self, name: str) -> None:
        for registry in self._registries():
            registry.remove_owned(name)

    def _registries(self) -> tuple[_Registry[Any], ...]:
        return (self.antennas, self.middlewares, self.guards, self.transports)

    def _add(self, name: str, plugin: object, info: PluginInfo) -> None:
        self.manager.register(plugin, name=name)
        unknown = [
            caller.name
            for caller in self.manager.get_hookcallers(plugin) or []
            if caller.spec is None
        ]
        if unknown:
            self.manager.unregister(plugin, name=name)
            raise pluggy.PluginValidationError(
                plugin,
                f"plugin {name!r} implements unknown hooks {', '.join(sorted(unknown))}; "
                f"known hooks: {', '.join(_HOOK_NAMES)}",
            )
        registries = self._registries()
        for registry in registries:
            registry.current_plugin = name
        try:
            self._call_for(name, "xraptor_register_antennas", registry=self.antennas)
            self._call_for(name, "xraptor_register_middlewares", registry=self.middlewares)
            self._call_for(name, "xraptor_register_guards", registry=self.guards)
            self._call_for(name, "xraptor_register_transports", registry=self.transports)
        finally:
            for registry in registries:
                registry.current_plugin = BUILTIN
        info.antennas = self.antennas.owned_by(name)
        info.schemes = self.antennas.schemes_owned_by(name)
        info.middlewares = self.middlewares.owned_by(name)
        info.guards = self.guards.owned_by(name)
        info.transports = self.transports.owned_by(name)
        self.info[name] = info

    def _call_for(self, name: str, hook: str, **kwargs: object) -> None:
        """Call one plugin's implementation of ``hook`` (with the arguments it takes)."""
        for impl in getattr(self.manager.hook, hook).get_hookimpls():
            if impl.plugin_name == name:
                impl.function(**{arg: kwargs[arg] for arg in impl.argnames})

    def _discover(self) -> None:
        disabled = {
            item.strip()
            for item in os.environ.get("XRAPTOR_DISABLE_PLUGINS", "").split(",")
            if item.strip()
        }
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = entry_point.dist
            dist_name = dist.name if dist is not None else "(unknown distribution)"
            version = dist.version if dist is not None else "?"
            if entry_point.name in disabled or dist_name in disabled:
                logger.info(
                    "plugin %r (%s) disabled by XRAPTOR_DISABLE_PLUGINS",
                    entry_point.name,
                    dist_name,
                )
                continue
            if entry_point.name in self.info:
                continue
            try:
                module = entry_point.load()
                self._add(
                    entry_point.name, module, PluginInfo(entry_point.name, dist_name, version)
                )
            except Exception as error:
                logger.error(
                    "could not load xraptor plugin %r from %s %s: %s: %s",
                    entry_point.name,
                    dist_name,
                    version,
                    type(error).__name__,
                    error,
                )
                if self.manager.get_plugin(entry_point.name) is not None:
                    self.manager.unregister(name=entry_point.name)
                self._remove_owned(entry_point.name)
                self.info[entry_point.name] = PluginInfo(
                    entry_point.name, dist_name, version, error=f"{type(error).__name__}: {error}"
                )

    def antenna_class(self, name: str) -> type[Antenna]:
        return self.antennas.get(name)

    def transport(self, name: str) -> Listen:
        """The ``listen`` function of the transport called ``name``.

        :raises UnknownTransportError: no installed plugin offers it
        """
        return self.transports.get(name)

    async def call_lifecycle(self, hook: str, **kwargs: Any) -> None:
        """Call a lifecycle hook and await any awaitable results."""
        import inspect

        results = getattr(self.manager.hook, hook)(**kwargs)
        for result in results:
            if inspect.isawaitable(result):
                await result


def _core_version() -> str:
    try:
        return importlib.metadata.version("xraptor")
    except importlib.metadata.PackageNotFoundError:
        return "(source)"


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin set, discovered on first use."""
    global _plugins
    if _plugins is None:
        _plugins = Plugins()
    return _plugins


def reset_plugins() -> None:
    """Forget discovered plugins (tests); the next ``get_plugins()`` discovers again."""
    global _plugins
    _plugins = None


def resolve_antenna(spec: object, **options: Any) -> Antenna:
    """Turn a name, URL, class or instance into an antenna instance.

    A URL (``"<scheme>://..."``) selects the antenna whose ``schemes`` hold its
    scheme, which turns the URL into options with ``options_from_url``.

    :raises UnknownAntennaError: for a name no installed plugin offers
    :raises UnknownSchemeError: (an ``UnknownAntennaError``) for a URL whose scheme
        no installed antenna accepts
    :raises TypeError: for anything that is not an antenna (a 0.4-style class is
        refused with a pointer to the migration notes)
    """
    from .antenna import Antenna

    if isinstance(spec, Antenna):
        if options:
            raise TypeError("antenna options cannot be applied to an antenna instance")
        return spec
    if isinstance(spec, type):
        if issubclass(spec, Antenna):
            return spec(**options)
        if all(hasattr(spec, attr) for attr in ("subscribe", "post", "is_alive")):
            raise TypeError(
                f"{spec.__name__} looks like an xraptor 0.4 antenna; the antenna contract "
                "changed in 0.5 (connect/disconnect/publish/watch/unwatch/is_alive). "
                "See 'Migrating a 0.4 antenna' in the README."
            )
        raise TypeError(f"{spec!r} is not a subclass of xraptor.Antenna")
    if isinstance(spec, str):
        if "://" in spec:
            cls = get_plugins().antennas.for_scheme(spec.split("://", 1)[0])
            return cls(**{**cls.options_from_url(spec), **options})
        return get_plugins().antenna_class(spec)(**options)
    raise TypeError(
        f"antenna must be a name, a URL, an Antenna subclass or instance; got {type(spec).__name__}"
    )
