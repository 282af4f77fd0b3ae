"""Run configuration: YAML run files and ``KEY=VALUE`` overrides, for Python as for the CLI.

A run file (see ``configs/*.yaml``) is one YAML mapping with two kinds of top-level keys:

* run settings, the keys of :data:`RUN_SETTINGS` (``data``, ``method``, ``weights``, ``resize``,
  ...), with the same values as the ``tabad benchmark`` flags of the same name; comma-separated
  strings (``method: padim,patchcore``) and sizes (``resize: 256x512``) are accepted as on the
  command line;
* method names, each mapping to options of that method's config dataclass
  (``padim: {n_features: all}``).

::

    from tabad.config import load_run_config, parse_method_sets

    run = load_run_config("configs/table4_cross_dataset.yaml")
    run = run.override({"epochs": 10}, parse_method_sets(["padim.n_features=all"]))
    run.settings["data"], run.method_options["padim"]

Values given explicitly (``override``; the CLI's flags and ``--set``) win over the file; a
setting absent from both is absent from :attr:`RunConfig.settings`, so the run's own defaults
apply. Every function here is pure apart from reading the file, and every error is a
:class:`~tabad.errors.ConfigError` that names the file or the offending item; the CLI prints
it as ``error: ...``. YAML lists become tuples, because method configs are frozen dataclasses
whose sequence fields are tuples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from tabad.errors import ConfigError

#: The run settings a run file may hold; its other top-level keys are method names.
RUN_SETTINGS = frozenset({"data", "categories", "method", "weights", "backbone", "seed", "resize", "crop", "layout",
                          "epochs", "title", "panels", "geometry", "memory_format"})
#: Settings holding a list of names; a string is split at commas.
LIST_SETTINGS = ("data", "categories", "method", "weights", "layout")
#: Settings holding an image size (see :func:`parse_size`).
SIZE_SETTINGS = ("resize", "crop")

Size = int | tuple[int, int] | str


def _yaml():
    # Imported on use: the CLI imports this module to build its parser, and `tabad --help`
    # should not pay for a YAML parser it does not need.
    import yaml

    return yaml


def split_csv(value: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: comma-separated names, blanks dropped."""
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_size(value: str) -> Size:
    """``"256"`` -> 256 (square); ``"256x512"`` -> ``(256, 512)`` as (H, W); ``"none"`` or ``"0"`` -> ``"none"``.

    ``"none"`` means "no crop"; :meth:`RunConfig.override` turns a ``crop`` of ``"none"`` into
    ``None``. Raises :class:`ConfigError` for anything else.
    """
    v = value.strip().lower()
    if v in ("none", "0"):
        return "none"
    try:
        if "x" in v:
            h, w = (int(x) for x in v.split("x"))
            return (h, w)
        return int(v)
    except ValueError:
        raise ConfigError(f"expected S, HxW or none, got {value!r}") from None


def parse_value(text: str, item: str | None = None) -> Any:
    """The YAML value of ``text`` (``"2.5"`` -> 2.5, ``"[a, b]"`` -> ``("a", "b")``, ``"all"`` -> ``"all"``)."""
    yaml = _yaml()
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{item or text!r}: value is not valid YAML ({exc})") from None
    return tuple(value) if isinstance(value, list) else value


def parse_options(items: Iterable[str] | None) -> dict[str, Any]:
    """``["mode=mixed", "scale=[0.1, 0.5]"]`` -> ``{"mode": "mixed", "scale": (0.1, 0.5)}``.

    Values are YAML. A later item wins over an earlier one with the same key.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value, item)
    return out


def parse_method_sets(items: Iterable[str] | None) -> dict[str, dict[str, Any]]:
    """``["padim.n_features=all", "padim.sigma=2.5"]`` -> ``{"padim": {"n_features": "all", "sigma": 2.5}}``.

    Each item is ``METHOD.KEY=VALUE`` with a YAML value; everything after the first ``=`` is the
    value (``other.name=a=b`` sets ``name`` to ``"a=b"``).
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        lhs = item.split("=", 1)[0]
        if "=" not in item or "." not in lhs:
            raise ConfigError(f"expected METHOD.KEY=VALUE (e.g. padim.n_features=all), got {item!r}")
        method, key = lhs.split(".", 1)
        out.setdefault(method, {})[key] = parse_value(item.split("=", 1)[1], item)
    return out


def _read_mapping(path: Path) -> dict:
    yaml = _yaml()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of run settings and method name -> options, "
                          f"got a {type(data).__name__}")
    return data


def method_options_from(data: Mapping[str, Any], source: str | Path = "config") -> dict[str, dict[str, Any]]:
    """The method options of a parsed run file: every key not in :data:`RUN_SETTINGS`.

    Each must map to a mapping of options; lists become tuples.
    """
    options: dict[str, dict[str, Any]] = {}
    for method, opts in data.items():
        if method in RUN_SETTINGS:
            continue
        if not isinstance(opts, dict):
            raise ConfigError(f"{source}: expected a mapping of method name -> options; {method!r} maps to "
                              f"{opts!r} (run settings are {', '.join(sorted(RUN_SETTINGS))})")
        options[str(method)] = {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}
    return options


def settings_from(data: Mapping[str, Any], source: str | Path = "config") -> dict[str, Any]:
    """The run settings of a parsed run file, normalised as the CLI flags would give them."""
    settings = {k: v for k, v in data.items() if k in RUN_SETTINGS}
    for key in LIST_SETTINGS:
        if isinstance(settings.get(key), str):
            settings[key] = split_csv(settings[key])
    for key in SIZE_SETTINGS:
        value = settings.get(key)
        if isinstance(value, str):
            try:
                settings[key] = parse_size(value)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {key}: {exc}") from None
        elif isinstance(value, list):
            settings[key] = tuple(value)
    return settings


@dataclass(frozen=True)
class RunConfig:
    """The settings and method options of one run, before the run's defaults are applied.

    ``settings`` holds only what was given (keys of :data:`RUN_SETTINGS`); ``method_options``
    maps a method name to options of its config dataclass; ``source`` is the file they came
    from, if any.
    """

    settings: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: Path | None = None

    def override(self, settings: Mapping[str, Any] | None = None,
                 method_options: Mapping[str, Mapping[str, Any]] | None = None) -> "RunConfig":
        """A new config where ``settings`` and ``method_options`` win over this one's.

        Settings whose value is ``None`` are "not given" and leave this config's value alone;
        method options are merged per method, key by key. A ``crop`` of ``"none"`` (see
        :func:`parse_size`) becomes ``None``.
        """
        unknown = sorted(set(settings or {}) - RUN_SETTINGS)
        if unknown:
            raise ConfigError(f"unknown run setting(s) {unknown}; known: {', '.join(sorted(RUN_SETTINGS))}")
        merged = dict(self.settings)
        merged.update({k: v for k, v in (settings or {}).items() if v is not None})
        options = {m: dict(o) for m, o in self.method_options.items()}
        for method, opts in (method_options or {}).items():
            options.setdefault(method, {}).update(opts)
        if merged.get("crop") == "none":
            merged["crop"] = None
        return RunConfig(settings=merged, method_options=options, source=self.source)


def load_run_config(path: str | Path) -> RunConfig:
    """Read the run file ``path`` (YAML): its settings and its method options.

    Raises :class:`~tabad.errors.ConfigError` naming ``path`` when it cannot be read, is not
    YAML, is not a mapping, or a method's options are not a mapping.
    """
    path = Path(path)
    data = _read_mapping(path)
    return RunConfig(settings=settings_from(data, path), method_options=method_options_from(data, path),
                     source=path).override()
