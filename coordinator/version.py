"""The installed fedtune version (a module, so it works whichever way the package is installed)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedtune")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+local"
