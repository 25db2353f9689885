"""Switchboard: a plugin-based omnichannel message router for marketplace customer support.

Plugin authors import the hook marker from here::

    from router import hookimpl
"""
from importlib.metadata import PackageNotFoundError, version

import pluggy

PROJECT = "switchboard"
hookimpl = pluggy.HookimplMarker(PROJECT)
hookspec = pluggy.HookspecMarker(PROJECT)

try:
    __version__ = version(PROJECT)
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["hookimpl", "hookspec", "__version__", "PROJECT"]
