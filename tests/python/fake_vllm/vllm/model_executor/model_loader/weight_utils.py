"""vllm/model_executor/model_loader/weight_utils.py: download_weights_from_hf and the
safetensors iterator. download_weights_from_hf calls huggingface_hub.snapshot_download
with local_files_only=HF_HUB_OFFLINE into cache_dir (or the hub's default cache). The
double never downloads: it resolves ids in a hub cache laid out as huggingface_hub
lays it out (models--org--name/snapshots/<commit>, refs/<revision>), as the hub does
offline, and raises what the hub raises when the files are not there."""
import os
from pathlib import Path


class LocalEntryNotFoundError(FileNotFoundError):
    """huggingface_hub.errors.LocalEntryNotFoundError (a FileNotFoundError subclass in the hub too)."""


def hub_cache(cache_dir=None) -> Path:
    return Path(cache_dir or os.environ.get("HF_HUB_CACHE") or Path.home() / ".cache" / "huggingface" / "hub")


def download_weights_from_hf(model_name_or_path, cache_dir, allow_patterns, revision=None, subfolder=None,
                             ignore_patterns=None):
    repo = hub_cache(cache_dir) / ("models--" + model_name_or_path.replace("/", "--"))
    ref = repo / "refs" / (revision or "main")
    if ref.is_file():
        folder = repo / "snapshots" / ref.read_text().strip()
        if folder.is_dir():
            return str(folder / subfolder if subfolder else folder)
    raise LocalEntryNotFoundError(
        f"Cannot find the requested files in the disk cache and outgoing traffic has been disabled: {model_name_or_path}")


def safetensors_weights_iterator(files, use_tqdm_on_load=False, *args, **kwargs):
    from safetensors_reader import read_file
    for path in files:
        yield from read_file(path)
