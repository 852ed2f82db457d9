"""vllm.plugins.load_general_plugins: entry-point group vllm.general_plugins, zero-argument
callables, once per process, filtered by VLLM_PLUGINS."""
import os
from importlib.metadata import entry_points

_loaded = False


def load_general_plugins():
    global _loaded
    if _loaded:
        return
    _loaded = True
    allowed = os.environ.get("VLLM_PLUGINS")
    for ep in entry_points(group="vllm.general_plugins"):
        if allowed is None or ep.name in allowed.split(","):
            ep.load()()
