"""deepserve: a model-serving inference server."""

__version__ = "0.1.0"
