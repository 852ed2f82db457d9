"""vllm/envs.py: VLLM_CACHE_ROOT is $VLLM_CACHE_ROOT, else $XDG_CACHE_HOME/vllm, else
~/.cache/vllm (get_default_cache_root and the "VLLM_CACHE_ROOT" entry of environment_variables)."""
import os


def __getattr__(name):
    if name == "VLLM_CACHE_ROOT":
        default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vllm")
        return os.path.expanduser(os.environ.get("VLLM_CACHE_ROOT", default))
    raise AttributeError(name)
