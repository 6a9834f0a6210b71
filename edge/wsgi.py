"""WSGI entry point for gunicorn: ``edge.wsgi:app``.

Built in each worker from the effective settings (the daemon connection is
made lazily, after the fork).
"""

import settings
from edge.app import from_settings

app = from_settings(settings.load())
