"""Fixtures for every tier; the helpers live in wgbtest.py."""
from wgbtest import CI, RUN_ID, entered_netns, netns, require, require_bcc, require_root, require_tools, sh, unique  # noqa: F401
