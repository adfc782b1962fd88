"""dnpu_bluesky: gradient descent in materio by homodyne gradient extraction, on Bluesky."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dnpu-bluesky")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
