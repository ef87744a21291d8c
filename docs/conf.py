"""Sphinx configuration for trio_wsmgr."""

from __future__ import annotations

import os

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
# Links into Python's and Trio's docs need their inventories, fetched over the
# network. CI and many build machines are offline, and a failed fetch is a warning
# (an error under -W), so they are opt-in: TRIO_WSMGR_DOCS_ONLINE=1.
intersphinx_mapping = (
    {
        "python": ("https://docs.python.org/3", None),
        "trio": ("https://trio.readthedocs.io/en/stable", None),
    }
    if os.environ.get("TRIO_WSMGR_DOCS_ONLINE") == "1"
    else {}
)
nitpicky = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
html_theme = "furo"
html_title = "trio_wsmgr"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
