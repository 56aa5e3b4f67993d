"""Test-session setup: the method registry is filled once, as the CLI and the workflow do at their top."""

from mpqbench.plugins import discover

discover()
