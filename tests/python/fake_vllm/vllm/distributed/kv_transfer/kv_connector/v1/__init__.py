"""vllm/distributed/kv_transfer/kv_connector/v1/__init__.py re-exports the base classes."""
from .base import KVConnectorBase_V1, KVConnectorMetadata, KVConnectorRole  # noqa: F401
