"""Sphinx configuration for trio_wsmgr."""

from __future__ import annotations

import trio_wsmgr

project = "trio_wsmgr"
author = "trio_wsmgr developers"
copyright = "2026, trio_wsmgr developers"  # noqa: A001
release = version = trio_wsmgr.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "trio": ("https://trio.readthedocs.io/en/stable", None),
}
# The build must work offline (CI has no network): intersphinx inventories are
# optional, and a missing one must not fail a -W build.
intersphinx_disabled_reftypes = ["*"]
intersphinx_timeout = 1
suppress_warnings = ["intersphinx.external"]
nitpicky = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
html_theme = "furo"
html_title = "trio_wsmgr"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
