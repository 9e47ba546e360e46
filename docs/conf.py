"""Sphinx configuration of the fastnn documentation.

Build (from the repository root, after ``pip install ".[docs]"``)::

    sphinx-build -W -b html docs docs/_build/html

The gallery scripts in docs/examples/ run during the build (sphinx-gallery)
and their figures go into the pages.
"""
from __future__ import annotations

import os

import fastnn

project = "fastnn"
author = "the fastnn developers"
copyright = "the fastnn developers"
release = fastnn.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]

# NumPy-style docstrings (Parameters / Returns sections).
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_preprocess_types = False

autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "none"          # the signatures and the docstrings say it
autodoc_inherit_docstrings = True
autosummary_generate = False

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "matplotlib_animations": False,
    "reset_modules": ("matplotlib",),
    "show_memory": False,
}

html_theme = "furo"
html_title = f"fastnn {release}"
exclude_patterns = ["_build", "README.md", "init_experiment.md", "examples"]
templates_path: list[str] = []
html_static_path: list[str] = []

os.environ.setdefault("MPLBACKEND", "Agg")
