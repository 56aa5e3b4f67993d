"""Baseline MPQ methods, one file each; every module registers itself in ``mpqbench.search.METHODS``.

To add a method, write ``baselines/<name>.py`` with a ``Method`` subclass decorated by
``@register_method("<name>")`` (see ``baselines/edmips.py`` for the smallest example); it is picked up
by ``mpqbench.search.load_plugins()`` and by the generic contract test in ``tests/test_methods.py``.
"""
