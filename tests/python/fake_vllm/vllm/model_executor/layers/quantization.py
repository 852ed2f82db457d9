"""Quantization methods, as vLLM's behave after loading:
- Fp8LinearMethod (layers/quantization/fp8.py): creates weight [out, in] and a per-shard
  weight_scale; process_weights_after_loading requantizes to one per-tensor scale and
  registers weight.t() (a non-contiguous view) through replace_parameter. The kernel
  (fp8_linear) is chosen at create_weights: Marlin without fp8 hardware (capability < 8.9)
  or with VLLM_TEST_FORCE_FP8_MARLIN (kernels/linear/scaled_mm/marlin.py); on Marlin the
  weight is kept (K, N) too. torch 1.13 has no float8 dtype, so the double keeps the
  model dtype for the values.
- OnlineFp8LinearMethod (layers/quantization/online/fp8.py): uses_meta_device; weights
  are created on the meta device and materialized, loaded and quantized layer by layer
  (model_loader/reload/layerwise.py); what was not processed during loading is
  processed by finalize_layerwise_processing.
- BaseKVCacheMethod (layers/quantization/kv_cache.py): q/k/v/prob scale parameters
  initialized to -1.0; processing derives the Python floats _k_scale_float,
  _v_scale_float, _q_scale_float, fills _k_scale_cpu/_v_scale_cpu, copies into the
  _k_scale... buffers and deletes the parameters."""
import os

import torch

from ..utils import replace_parameter, set_weight_attrs


class QuantizeMethodBase:
    uses_meta_device = False  # layers/quantization/base_config.py

    def process_weights_after_loading(self, layer) -> None:
        return


class UnquantizedLinearMethod(QuantizeMethodBase):
    def create_weights(self, layer, input_size, output_size, params_dtype, weight_loader):
        weight = torch.nn.Parameter(torch.empty(output_size, input_size, dtype=params_dtype), requires_grad=False)
        set_weight_attrs(weight, {"weight_loader": weight_loader})
        layer.register_parameter("weight", weight)


def per_tensor_scale_loader(param, loaded_weight, shard_id):
    """parameter.py PerTensorScaleParameter.load_qkv_weight: shard i's scale into slot i."""
    param.data[shard_id].copy_(loaded_weight.reshape(()))


class MarlinFP8ScaledMMLinearKernel:
    """kernels/linear/scaled_mm/marlin.py"""


class CutlassFP8ScaledMMLinearKernel:
    """kernels/linear/scaled_mm/cutlass.py"""


def init_fp8_linear_kernel():
    from vllm.platforms import current_platform
    if os.environ.get("VLLM_TEST_FORCE_FP8_MARLIN", "0") not in ("0", "") or not current_platform.has_device_capability(89):
        return MarlinFP8ScaledMMLinearKernel()
    return CutlassFP8ScaledMMLinearKernel()


class Fp8LinearMethod(QuantizeMethodBase):
    def create_weights(self, layer, input_size, output_size, params_dtype, weight_loader):
        UnquantizedLinearMethod().create_weights(layer, input_size, output_size, params_dtype, weight_loader)
        # create_fp8_scale_parameter: one scale a shard, set to float32's minimum until loaded
        scale = torch.nn.Parameter(torch.full((len(layer.logical_widths),), torch.finfo(torch.float32).min),
                                   requires_grad=False)
        scale.weight_loader = per_tensor_scale_loader
        layer.register_parameter("weight_scale", scale)
        self.fp8_linear = init_fp8_linear_kernel()
        self.use_marlin = isinstance(self.fp8_linear, MarlinFP8ScaledMMLinearKernel)

    def process_weights_after_loading(self, layer):
        if self.use_marlin:
            replace_parameter(layer, "weight", layer.weight.t())
            # utils/marlin_utils_fp8.py: Marlin's scales are converted to param_dtype =
            # torch.get_default_dtype(), which BaseModelLoader.load_model keeps set to the model dtype
            replace_parameter(layer, "weight_scale", layer.weight_scale.to(torch.get_default_dtype()))
            return
        # process_fp8_weight_tensor_strategy: one scale for the fused shards
        weight_scale = layer.weight_scale.max().reshape(1)
        replace_parameter(layer, "weight", layer.weight.t())
        replace_parameter(layer, "weight_scale", weight_scale)
        layer.input_scale = None


class OnlineFp8LinearMethod(QuantizeMethodBase):
    uses_meta_device = True

    def create_weights(self, layer, input_size, output_size, params_dtype, weight_loader):
        weight = torch.nn.Parameter(torch.empty(output_size, input_size, dtype=params_dtype, device="meta"),
                                    requires_grad=False)
        set_weight_attrs(weight, {"weight_loader": weight_loader})
        layer.register_parameter("weight", weight)
        from ..model_loader.reload import initialize_online_processing
        initialize_online_processing(layer)

    def process_weights_after_loading(self, layer):
        if getattr(layer, "_already_called_process_weights_after_loading", False):
            return
        # online/fp8.py: quantize the loaded high-precision weight, keep (K, N) and the scale
        weight_scale = layer.weight.abs().max().reshape(1).to(torch.float32)
        replace_parameter(layer, "weight", layer.weight.t())
        layer.register_parameter("weight_scale", torch.nn.Parameter(weight_scale, requires_grad=False))
        layer._already_called_process_weights_after_loading = True


def kv_scale_loader(param, loaded_weight):
    """kv_cache.py KVCacheScaleParameter.weight_loader."""
    if loaded_weight.numel() != 1:
        raise ValueError(f"KV-cache scale expects a scalar weight, got shape {tuple(loaded_weight.shape)}")
    param.data.copy_(loaded_weight.reshape(()))


class BaseKVCacheMethod(QuantizeMethodBase):
    def create_weights(self, layer):
        for name in ("q_scale", "k_scale", "v_scale", "prob_scale"):
            scale = torch.nn.Parameter(torch.tensor(-1.0), requires_grad=False)
            scale.weight_loader = kv_scale_loader
            setattr(layer, name, scale)

    def process_weights_after_loading(self, layer):
        if not hasattr(layer, "q_scale"):  # weight reloading: nothing to process
            return
        if layer.kv_cache_dtype.startswith("fp8"):  # is_quantized_kv_cache
            if layer.k_scale > 0.0 and layer.v_scale > 0.0:
                k_scale, v_scale = layer.k_scale.to("cpu").tolist(), layer.v_scale.to("cpu").tolist()
            elif layer.k_scale < 0.0 and layer.v_scale < 0.0:
                k_scale = v_scale = 1.0
            else:
                k_scale = v_scale = max(layer.k_scale, layer.v_scale).to("cpu").tolist()
            if layer.q_scale < 0.0:
                layer._q_scale.copy_(torch.tensor(k_scale))
                layer._q_scale_float = k_scale
            layer._k_scale.copy_(torch.tensor(k_scale))
            layer._v_scale.copy_(torch.tensor(v_scale))
            layer._k_scale_float = k_scale
            layer._v_scale_float = v_scale
            layer._k_scale_cpu.fill_(k_scale)
            layer._v_scale_cpu.fill_(v_scale)
        q_scale = layer.q_scale if layer.q_scale > 0.0 else 1.0
        prob_scale = layer.prob_scale if layer.prob_scale > 0.0 else 1.0
        layer._q_scale.copy_(torch.as_tensor(q_scale))
        layer._q_scale_float = q_scale.item() if isinstance(q_scale, torch.Tensor) else q_scale
        layer._prob_scale.copy_(torch.as_tensor(prob_scale))
        del layer.k_scale, layer.v_scale, layer.q_scale, layer.prob_scale


def get_linear_method(quantization):
    """The linear method a QuantizationConfig.get_quant_method returns for a linear layer."""
    return {None: UnquantizedLinearMethod, "fp8": Fp8LinearMethod, "online_fp8": OnlineFp8LinearMethod}[quantization]()
