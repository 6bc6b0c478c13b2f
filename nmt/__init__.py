"""nmt: the Transformer of Vaswani et al. (2017), reproduced as a command-line toolkit."""

__version__ = "0.1.0"
