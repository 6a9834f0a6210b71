"""Typed, validated configuration shared by every process of the platform.

One TOML file (``/etc/falcon/falcon.toml`` by default, or the path in
``FALCON_CONFIG``), every key overridable by an environment variable named
``FALCON_<SECTION>_<KEY>`` (``edge.workers`` -> ``FALCON_EDGE_WORKERS``).
Precedence: built-in default < TOML file < environment.

Every key is declared once in :data:`SETTINGS` with its type, default and a
description (gunicorn's ``config.py`` style). Errors name the key and where its
value came from. ``falconctl config`` prints the effective configuration.
"""

from settings.schema import SETTINGS, ConfigError, Setting, Settings, load

__all__ = ["SETTINGS", "ConfigError", "Setting", "Settings", "load"]
