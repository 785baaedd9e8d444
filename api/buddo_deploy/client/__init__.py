"""The operators' command line, ``buddo`` (cli.py)."""

import warnings

from authlib.deprecate import AuthlibDeprecationWarning

# Authlib prefers "httpx2" and says so on every start when it falls back to httpx (which works):
# before any module of this package imports Authlib's httpx client.
warnings.filterwarnings("ignore", category=AuthlibDeprecationWarning)
