"""Baseline MPQ methods, one file each, whole: a baseline's search logic, its sensitivity estimator and its
registration live in its file; every module registers itself in ``mpqbench.search.METHODS``.

To add a method, write ``baselines/<name>.py`` with a ``Method`` subclass decorated by
``@register_method("<name>")`` that sets its facts (``role``, ``needs_teacher``, ``smoke_hparams``; see
``baselines/edmips.py`` for the smallest example). Importing this package imports every module in it; the
package is the ``baselines`` entry of the ``mpqbench.methods`` entry-point group (``pyproject.toml``), which
:func:`mpqbench.plugins.discover` loads — so a new file needs no reinstall. It is then run by the generic
contract test in ``tests/test_methods.py``.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
