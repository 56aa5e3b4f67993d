"""Simulate a process killed right after it wrote a checkpoint (for the resume tests)."""

import contextlib

import pytest


class Killed(Exception):
    pass


@contextlib.contextmanager
def killed_after_first_save(monkeypatch, module):
    """Inside the block, ``module.torch_save`` writes its file and then 'kills' the run (raises Killed)."""
    real_save = module.torch_save

    def save_then_die(obj, path):
        real_save(obj, path)
        raise Killed

    monkeypatch.setattr(module, "torch_save", save_then_die)
    try:
        with pytest.raises(Killed):
            yield
    finally:
        monkeypatch.setattr(module, "torch_save", real_save)
