"""Contenders of ``bench/compare.py``: the apps it runs next to this platform."""
