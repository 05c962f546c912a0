"""Feature store: one extraction pass of a frontend over a dataset, every hidden layer kept on disk.

Public entry points:

- :func:`open_store` -> :class:`featurestore.store.FeatureStore` (reading API)
- ``python -m featurestore.build`` (extraction CLI)
- :mod:`featurestore.registry` (the backbones this project knows)
"""
__version__ = "0.1.0"

from featurestore.store import FeatureStore, open_store  # noqa: E402

__all__ = ["FeatureStore", "open_store", "__version__"]
