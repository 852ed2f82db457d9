"""vllm.distributed.kv_transfer: only what a v1 KV connector imports (see kv_connector/)."""
