"""Sphinx configuration of the anyio-keyq documentation.

Build with ``sphinx-build -n -W --keep-going -b html docs docs/_build/html``.

The build is offline and deterministic: intersphinx reads the inventories of Python,
anyio and trio only from ``docs/_inventories/<name>.inv``, never from the network. An
inventory that is not there is skipped, and references into its project are then
accepted unchecked (see ``nitpick_ignore_regex`` below) instead of failing the
nitpicky build. To link them, download the inventories once, for example::

    curl -fsSLo docs/_inventories/python.inv https://docs.python.org/3/objects.inv
    curl -fsSLo docs/_inventories/anyio.inv https://anyio.readthedocs.io/en/stable/objects.inv
    curl -fsSLo docs/_inventories/trio.inv https://trio.readthedocs.io/en/stable/objects.inv
"""

from __future__ import annotations

import builtins
import re
import sys
import tomllib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from sphinx.pycode import ModuleAnalyzer

if TYPE_CHECKING:
    from sphinx.application import Sphinx

_DOCS = Path(__file__).resolve().parent
# Import the package from this checkout, even when it is not installed.
sys.path.insert(0, str(_DOCS.parent))

# sphinx-autodoc-typehints still calls an API that Sphinx 10 will remove; that is its
# maintainers' business, not a problem of these docs.
warnings.filterwarnings(
    "ignore", message=r".*sphinx_autodoc_typehints.*", category=DeprecationWarning
)
warnings.filterwarnings(
    "ignore", message=r".*sphinx_autodoc_typehints.*", category=PendingDeprecationWarning
)

# -- Project ----------------------------------------------------------------------------

project = "anyio-keyq"
author = "the anyio-keyq maintainers"
copyright = "the anyio-keyq maintainers"
with (_DOCS.parent / "pyproject.toml").open("rb") as _file:
    release = tomllib.load(_file)["project"]["version"]
version = ".".join(release.split(".")[:2])

# -- General ----------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinxcontrib_trio",
    "sphinx_autodoc_typehints",
]
exclude_patterns = ["_build", "_inventories"]
default_role = "py:obj"
nitpicky = True
# Never use the time of the build: the same sources give the same pages.
today_fmt = "%Y"
html_last_updated_fmt = None

# -- autodoc ----------------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False
typehints_document_rtype = True
typehints_use_rtype = False
typehints_defaults = "comma"
always_use_bars_union = True

# -- intersphinx, offline ---------------------------------------------------------------

_INVENTORIES = _DOCS / "_inventories"
_PROJECTS = {
    "python": "https://docs.python.org/3/",
    "anyio": "https://anyio.readthedocs.io/en/stable/",
    "trio": "https://trio.readthedocs.io/en/stable/",
}
intersphinx_mapping = {
    name: (url, str(_INVENTORIES / f"{name}.inv"))
    for name, url in _PROJECTS.items()
    if (_INVENTORIES / f"{name}.inv").is_file()
}

# The type variables of the package have no page of their own.
nitpick_ignore = [
    (role, f"{prefix}{name}")
    for role in ("py:class", "py:obj")
    for prefix in (
        "",
        "anyio_keyq._lanes.",
        "anyio_keyq._job.",
        "anyio_keyq._iterators.",
        "anyio_keyq._scope.",
    )
    for name in ("K", "T", "R", "PosArgsT")
]
# References into a project whose inventory is missing cannot be checked: accept them,
# and only them, rather than fail the build.
_PY_ROLES = r"py:(class|exc|obj|func|meth|attr|data|mod)"
nitpick_ignore_regex: list[tuple[str, str]] = []
if "anyio" not in intersphinx_mapping:
    nitpick_ignore_regex.append((_PY_ROLES, r"anyio(\..+)?"))
if "trio" not in intersphinx_mapping:
    nitpick_ignore_regex.append((_PY_ROLES, r"trio(\..+)?"))
if "python" not in intersphinx_mapping:
    _stdlib = "|".join(sorted(re.escape(name) for name in sys.stdlib_module_names))
    _builtins = "|".join(sorted(re.escape(name) for name in dir(builtins) if name[0] != "_"))
    nitpick_ignore_regex += [
        (_PY_ROLES, rf"({_stdlib})(\..+)?"),
        (_PY_ROLES, rf"({_builtins})"),
    ]

# -- HTML -------------------------------------------------------------------------------

html_theme = "furo"
html_title = f"anyio-keyq {release}"
html_static_path: list[str] = []


# -- Local tweaks -----------------------------------------------------------------------

#: Classes that only the library instantiates: their constructor is not public API.
_NO_SIGNATURE = {
    "anyio_keyq.AdaptiveLimiterStatistics",
    "anyio_keyq.Job",
    "anyio_keyq.LanesStatistics",
    "anyio_keyq.Limiter",
    "anyio_keyq.PriorityLimiterStatistics",
    "anyio_keyq.RateLimiterStatistics",
    "anyio_keyq.RetryStatistics",
    "anyio_keyq.ScopeStatistics",
    "anyio_keyq.TaskSpawner",
    "anyio_keyq.WeightedLimiterStatistics",
    "anyio_keyq.redis.DeadLetter",
    "anyio_keyq.redis.RedisJob",
    "anyio_keyq.redis.RedisQueueInfo",
    "anyio_keyq.redis.RedisWorkerStatistics",
}


def _hide_private_constructors(
    app: object,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str] | None:
    if what == "class" and name in _NO_SIGNATURE:
        return ("", "")
    return None


def _defining_module(package_name: str, name: str) -> str | None:
    """The private module of *package_name* that defines its public *name*."""
    obj = getattr(sys.modules.get(package_name), name, None)
    if obj is None:
        return None
    for module_name, module in sorted(sys.modules.items()):
        if module_name.startswith(f"{package_name}._") and vars(module).get(name) is obj:
            return module_name
    return None


def _attribute_doc_comments(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Give attributes of re-exported classes the ``#:`` comments of their source.

    Every public class reports ``anyio_keyq`` as its module, so autodoc looks for doc
    comments in ``anyio_keyq/__init__.py`` and finds none; read them from the private
    module that defines the class instead.
    """
    if what != "attribute" or lines:
        return
    owner_name, _, attr = name.rpartition(".")
    package_name, _, class_name = owner_name.rpartition(".")
    module_name = _defining_module(package_name, class_name)
    if module_name is not None:
        docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        lines[:] = docs.get((class_name, attr), [])


def _follow_reexport(app: object, modname: str, attribute: str) -> str | None:
    """Let viewcode link ``anyio_keyq.X`` to the source of the module defining X."""
    if modname not in ("anyio_keyq", "anyio_keyq.redis"):
        return None
    return _defining_module(modname, attribute.split(".")[0])


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-signature", _hide_private_constructors, priority=100)
    app.connect("autodoc-process-docstring", _attribute_doc_comments, priority=100)
    app.connect("viewcode-follow-imported", _follow_reexport)
