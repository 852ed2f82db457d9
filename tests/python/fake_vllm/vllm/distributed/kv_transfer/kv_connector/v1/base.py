"""Test double of vllm/distributed/kv_transfer/kv_connector/v1/base.py (upstream main 2026-08-18):
the parts of KVConnectorBase_V1 a connector inherits. The abstract methods are listed so that a
connector missing one fails to instantiate, as it does in vLLM."""
import enum
from abc import ABC, abstractmethod


class KVConnectorRole(enum.Enum):
    # base.py, KVConnectorRole
    SCHEDULER = 0
    WORKER = 1


class KVConnectorMetadata(ABC):  # noqa: B024
    """base.py, KVConnectorMetadata: scheduler → worker, built once per step."""


class KVConnectorBase_V1(ABC):
    def __init__(self, vllm_config, role, kv_cache_config):
        # base.py, KVConnectorBase_V1.__init__: refuses a config without kv_transfer_config.
        self._connector_metadata = None
        self._vllm_config = vllm_config
        if vllm_config.kv_transfer_config is None:
            raise ValueError("kv_transfer_config must be set for KVConnectorBase_V1")
        self._kv_transfer_config = vllm_config.kv_transfer_config
        self._kv_cache_config = kv_cache_config
        self._role = role

    @property
    def role(self):
        return self._role

    @property
    def requires_kv_delivery(self) -> bool:
        # base.py, KVConnectorBase_V1.requires_kv_delivery: the producer role by default.
        return self._kv_transfer_config.is_kv_producer

    # base.py, bind_connector_metadata / clear_connector_metadata / _get_connector_metadata /
    # has_connector_metadata: the model runner binds before the forward and clears after it.
    def bind_connector_metadata(self, connector_metadata):
        self._connector_metadata = connector_metadata

    def clear_connector_metadata(self):
        self._connector_metadata = None

    def _get_connector_metadata(self):
        assert self._connector_metadata is not None
        return self._connector_metadata

    def has_connector_metadata(self) -> bool:
        return self._connector_metadata is not None

    def register_kv_caches(self, kv_caches):
        # base.py, register_kv_caches: default does nothing.
        return

    @abstractmethod
    def start_load_kv(self, forward_context, **kwargs): ...

    @abstractmethod
    def wait_for_layer_load(self, layer_name): ...

    @abstractmethod
    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs): ...

    @abstractmethod
    def wait_for_save(self): ...

    def get_finished(self, finished_req_ids):
        # base.py, get_finished: no asynchronous transfers by default.
        return None, None

    def get_block_ids_with_load_errors(self):
        # base.py, get_block_ids_with_load_errors: none by default.
        return set()

    @abstractmethod
    def get_num_new_matched_tokens(self, request, num_computed_tokens): ...

    @abstractmethod
    def update_state_after_alloc(self, request, blocks, num_external_tokens): ...

    @abstractmethod
    def build_connector_meta(self, scheduler_output): ...

    def request_finished(self, request, block_ids):
        # base.py, request_finished: free the blocks now, no transfer params.
        return False, None
