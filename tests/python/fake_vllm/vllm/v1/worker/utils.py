"""vllm/v1/worker/utils.py bind_kv_cache: fills the runner's kv_caches list and binds
each attention layer of the forward context to its cache (layer.bind_kv_cache)."""


def bind_kv_cache(kv_caches, forward_context, runner_kv_caches, num_attn_module=1):
    assert len(runner_kv_caches) == 0
    for layer_name in sorted(kv_caches):
        runner_kv_caches.append(kv_caches[layer_name])
    for layer_name, kv_cache in kv_caches.items():
        forward_context[layer_name].bind_kv_cache(kv_cache)
