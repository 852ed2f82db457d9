"""Test double of vllm/distributed/kv_transfer/kv_connector/factory.py, KVConnectorFactory."""
import importlib


class KVConnectorFactory:
    _registry = {}

    @classmethod
    def register_connector(cls, name, module_path, class_name):
        # factory.py, register_connector: a second registration of a name is an error; loading is lazy.
        if name in cls._registry:
            raise ValueError(f"Connector '{name}' is already registered.")

        def loader():
            return getattr(importlib.import_module(module_path), class_name)

        cls._registry[name] = loader

    @classmethod
    def get_connector_class(cls, kv_transfer_config):
        # factory.py, get_connector_class: kv_connector_module_path wins over the registry.
        name = kv_transfer_config.kv_connector
        if kv_transfer_config.kv_connector_module_path:
            return getattr(importlib.import_module(kv_transfer_config.kv_connector_module_path), name)
        if name in cls._registry:
            return cls._registry[name]()
        raise ValueError(f"Unsupported connector type: {name}")

    @classmethod
    def create_connector(cls, config, role, kv_cache_config):
        # factory.py, create_connector: one instance per role (scheduler, worker).
        return cls.get_connector_class(config.kv_transfer_config)(config, role, kv_cache_config)
