"""A test double of the vLLM surface thaw_vllm uses, built from ../shared/VLLM_FACTS.md §9.
Only what the loader and worker extension touch; behaviour follows the cited vLLM files."""
