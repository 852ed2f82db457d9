"""The vLLM loader's "publish" key: after a rank restores its snapshot, its weights are published to
the pool (thaw_vllm.peer) so that the next instance restoring the same snapshot on this node is
served from this GPU memory device to device (docs/VLLM.md). Sleep mode withdraws the publications
before the weights' memory is released and publishes the next generation once they are back
(vllm_sleep.py). A failure to publish is one log line: the instance serves regardless."""
import logging
import weakref

from . import peer

log = logging.getLogger("thaw_vllm")

# (model, Publication) per model this worker published.
_published = []


def identity_before_restore(path):
    """The snapshot's identity, taken before its bytes are restored into the memory to publish."""
    return peer.identity(path)


def has_publication(model) -> bool:
    return any(ref() is model for ref, _ in _published)


def before_restore(model) -> None:
    """Before a restore rewrites the model's memory in place (thaw_restore, a wake from level 2):
    its publications are withdrawn, so no copy from that memory is kept while it changes."""
    for ref, publication in _published:
        if ref() is model and publication.published:
            _withdraw(publication)


def after_restore(model, tensors, path, identity, pool, rank, publish) -> None:
    """After it: the model's old publications end (the memory may hold another file now) and, if it
    was published or publish is asked, it is published again under this restore's identity."""
    was_published = has_publication(model)
    for ref, publication in [(r, p) for r, p in _published if r() is model]:
        publication.close()
        _published.remove((ref, publication))
    if publish or was_published:
        publish_model(model, tensors, path, identity, pool, rank)


def _withdraw(publication) -> None:
    try:
        publication.withdraw()
    except Exception as e:
        log.warning("thaw: withdrawing the publication of %s failed (%s); closing it", publication.snapshot, e)
        publication.close()


def publish_model(model, tensors, path, identity, pool, rank) -> None:
    try:
        publication = peer.publish(tensors, path, pool=pool, snapshot_identity=identity)
    except Exception as e:  # publishing is for the next instance; this one runs either way
        log.warning("thaw: rank %s did not publish %s for the next instance: %s", rank, path, e)
        return
    _published.append((weakref.ref(model), publication))
    log.info("thaw: rank %s published %s to the pool (generation %d): the next instance is served from this GPU",
             rank, path, publication.generation)


def withdraw_all() -> None:
    """Before the weights' memory changes (sleep): no copy from it is kept from now on."""
    for _, publication in _published:
        if publication.published:
            _withdraw(publication)


def republish_all() -> None:
    """After the weights hold their snapshot's bytes again (wake): the next generation."""
    for model_ref, publication in list(_published):
        model = model_ref()
        if model is None:
            publication.close()
            _published.remove((model_ref, publication))
            continue
        if publication.published:
            continue  # published again already, by the restore that refilled it
        try:
            from .vllm_capture import model_tensors
            publication.bump(model_tensors(model))
        except Exception as e:
            log.warning("thaw: publishing %s again after waking failed: %s", publication.snapshot, e)
