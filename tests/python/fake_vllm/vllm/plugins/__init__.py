"""vllm/plugins/__init__.py load_general_plugins: entry-point group vllm.general_plugins,
once per process, filtered by VLLM_PLUGINS. load_plugins_by_group guards only
plugin.load(); load_general_plugins then calls each function unguarded, so an
exception raised by a plugin's function stops the process that loads it."""
import logging
import os
from importlib.metadata import entry_points

logger = logging.getLogger("vllm.plugins")
DEFAULT_PLUGINS_GROUP = "vllm.general_plugins"
plugins_loaded = False


def load_plugins_by_group(group):
    allowed = os.environ.get("VLLM_PLUGINS")
    allowed = None if allowed is None else allowed.split(",")
    plugins = {}
    for plugin in entry_points(group=group):
        if allowed is None or plugin.name in allowed:
            try:
                plugins[plugin.name] = plugin.load()
            except Exception:
                logger.exception("Failed to load plugin %s", plugin.name)
    return plugins


def load_general_plugins():
    global plugins_loaded
    if plugins_loaded:
        return
    plugins_loaded = True
    for func in load_plugins_by_group(DEFAULT_PLUGINS_GROUP).values():
        func()
