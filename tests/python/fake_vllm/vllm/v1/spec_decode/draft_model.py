"""vllm/v1/spec_decode/draft_model.py DraftModelProposer: the draft gets its own
VllmConfig, a copy of the target's whose model_config is the draft's
(_create_draft_vllm_config: replace(base, model_config=spec.draft_model_config, ...)),
and is loaded with get_model(vllm_config=draft_vllm_config, prefix="draft_model"), so the
loader receives model_config is vllm_config.model_config for the draft too."""
import dataclasses


class DraftModelProposer:
    def __init__(self, vllm_config, device):
        self.vllm_config = vllm_config
        self.speculative_config = vllm_config.speculative_config
        self.device = device

    def _create_draft_vllm_config(self):
        return dataclasses.replace(self.vllm_config, model_config=self.speculative_config.draft_model_config)

    def _get_model(self):
        from vllm.model_executor.model_loader import get_model
        return get_model(vllm_config=self._create_draft_vllm_config(), prefix="draft_model")

    def load_model(self, target_model):
        self.model = self._get_model()
