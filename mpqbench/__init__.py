"""mpqbench: a reproducible benchmark harness for mixed-precision quantization policy search."""

__version__ = "0.1.0"
