"""Loading a reranker the way sentence-transformers' CrossEncoder does, and saving one it loads.

A model is a local folder, a Hugging Face hub id, or an `s3://` folder (the last two copied to a local cache
first; `ce_ray.model_folder`, which a job's driver uses without importing torch). Safe by default: safetensors only
unless `allow_pickle`, no repository code unless `trust_remote_code`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .model_folder import (SIGMOID, ModelError, activation_path, as_loaded, check_safe, dtype_name, load_tokenizer,
                           local_model_path, max_length_of)


def activation_from_path(dotted: str) -> Callable[[torch.Tensor], torch.Tensor]:
    import importlib

    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)()


# Model types whose Hugging Face code takes a ready [rows, 1, 1, width] boolean attention mask as it is.
# Given the usual [rows, width] mask, they check `mask.all()` in every forward pass (to drop a mask without
# padding), and on a GPU that check waits for all queued work: the host could never queue a batch ahead of
# the GPU. Other model types get the usual mask.
MASK_4D_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "electra"})


def attention_mask_for(model_type: str, mask: torch.Tensor) -> torch.Tensor:
    """The attention mask to hand a model of this type, from a [rows, width] mask of real tokens."""
    return mask.bool()[:, None, None, :] if model_type in MASK_4D_MODEL_TYPES else mask.long()


def attention_inputs(model_type: str, mask: torch.Tensor, padded: bool) -> dict:
    """A batch's attention-mask input: none when no row is padded, so that SDPA may take its unmasked
    FlashAttention kernel (length-sorted batches are mostly so), else `attention_mask_for`'s. `padded` comes
    from the host: reading a mask on the GPU would wait for it."""
    return {"attention_mask": attention_mask_for(model_type, mask)} if padded else {}


def use_shape_free_attention(device) -> None:
    """On a CUDA device, keeps scaled_dot_product_attention off its cuDNN backend in this process.

    cuDNN attention builds an execution plan for each new input shape (tens to hundreds of milliseconds,
    forward and backward apart), and reranking batches come in hundreds of (rows, width) shapes. On an H200
    with torch 2.11, in bf16, a first pass over 300,000 pairs ran at 35,800 pairs/s and a replica's pass over
    the same shapes right after it at 87,000, and CrossEncoderTrainer trained 5.7x slower than in fp32. The
    FlashAttention and memory-efficient kernels that SDPA picks instead take any shape. A replica or
    training worker owns its process, so the switch is set there once.
    """
    if torch.device(device).type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def to_device(array, device) -> torch.Tensor:
    """A numpy array as a tensor on `device`, in one host copy. For a GPU the copy goes through pinned
    memory: a copy from pageable memory may first wait for all the GPU's queued work, and the host could then
    never prepare a batch while the GPU runs the one before. (Arrays are often read-only views of Arrow
    buffers, which torch.from_numpy would warn about.)"""
    device = torch.device(device)
    tensor = torch.empty(array.shape, dtype=getattr(torch, array.dtype.name), pin_memory=device.type == "cuda")
    tensor.numpy()[...] = array
    return tensor.to(device, non_blocking=True)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: float16 on a GPU, float32 on CPU.

    Half precision, for speed, must keep scores within 1e-2 of CrossEncoder.predict's fp32 ones. On the
    shared MiniLM-L12 reranker over all 6,165 WikiQA test pairs, bfloat16 missed that on 22 pairs (up to
    1.55e-2: its 8-bit mantissa) and float16 stayed within 2.05e-3, at the same tensor-core speed. float16's
    narrower range can overflow in some models: the Scorer then fails naming bfloat16 and float32.
    """
    return getattr(torch, dtype_name(dtype, device.type == "cuda"))


def device_and_dtype(device: Optional[str], dtype: str) -> tuple:
    """The torch device (the GPU where there is one, unless `device` says) and the dtype `pick_dtype` gives it."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return dev, pick_dtype(dtype, dev)


@dataclass
class Reranker:
    """A loaded cross-encoder: the sequence classifier, its tokenizer and CrossEncoder's conventions.

    From `load_scoring_model`'s own BERT (`ce_ray.bert`), `tokenizer` and `max_length` are None: a replica
    scores tokens made before it and needs only `pad_id` and `input_names`."""

    model: torch.nn.Module
    tokenizer: Optional[object]
    path: str
    max_length: Optional[int]
    activation: str
    device: torch.device
    dtype: torch.dtype
    model_type: str
    pad_id: int
    input_names: tuple  # the inputs the tokenizer makes: input_ids, token_type_ids or not, attention_mask

    def __post_init__(self):
        self.activation_fn = activation_from_path(self.activation)  # built once, not per batch

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits to scores: upcast to fp32 first, then the activation (as CrossEncoder.predict)."""
        return self.activation_fn(logits.float()).squeeze(-1)

    @staticmethod
    def logits(output) -> torch.Tensor:
        """The logits of a forward pass: ce-ray's BERT returns them, transformers' models an output object."""
        return output if isinstance(output, torch.Tensor) else output.logits


def load_reranker(
    model: str,
    device: Optional[str] = None,
    dtype: str = "auto",
    max_length: Optional[int] = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Reranker:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = local_model_path(model)
    check_safe(path, allow_pickle, trust_remote_code)
    dev, torch_dtype = device_and_dtype(device, dtype)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        config = as_loaded(config)  # a base model: a new one-logit head, as CrossEncoder adds to fine-tune it
        tokenizer = load_tokenizer(path, trust_remote_code)  # as CrossEncoder loads it, for its max length
        net = AutoModelForSequenceClassification.from_pretrained(
            path,
            config=config,
            dtype=torch_dtype,  # attention: SDPA where the architecture has it, else its own (DeBERTa's)
            use_safetensors=None if allow_pickle else True,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model {model}: {e}") from e
    if config.num_labels != 1:
        raise ModelError(f"{model} has {config.num_labels} labels; ce-ray scores single-logit rerankers")
    use_shape_free_attention(dev)  # on CUDA: for the whole process
    net.to(dev).eval()
    return Reranker(
        model=net,
        tokenizer=tokenizer,
        path=path,
        max_length=max_length or max_length_of(path, tokenizer, config),
        activation=activation_path(path, config.num_labels, trust_remote_code),
        device=dev,
        dtype=torch_dtype,
        model_type=config.model_type,
        # The model's own pad id first: a decoder's classifier (Llama's, Qwen's) scores a pair at its last token
        # that is not it, and a tokenizer without a pad token, or with another (Llama 3's), padded pairs scored at
        # their padding.
        pad_id=next((pad for pad in (config.pad_token_id, tokenizer.pad_token_id) if pad is not None), 0),
        input_names=tuple(tokenizer.model_input_names),
    )


def load_scoring_model(model: str, device: Optional[str] = None, dtype: str = "auto", allow_pickle: bool = False,
                       trust_remote_code: bool = False, implementation: str = "auto") -> Reranker:
    """The reranker a scoring replica runs. `auto`: ce-ray's own forward pass of a BERT classifier
    (`ce_ray.bert`, no transformers to import) where it reproduces the model; otherwise, and with
    `transformers`, `load_reranker`'s."""
    if implementation == "auto":
        from . import bert

        path = local_model_path(model)
        check_safe(path, allow_pickle, trust_remote_code)
        dev, torch_dtype = device_and_dtype(device, dtype)
        use_shape_free_attention(dev)  # on CUDA: for the whole process
        net = bert.load(path, torch_dtype, dev)
        if net is not None:
            return Reranker(model=net, tokenizer=None, path=path, max_length=None,
                            activation=activation_path(path, 1, trust_remote_code), device=dev, dtype=torch_dtype,
                            model_type=net.model_type, pad_id=net.pad_id,
                            input_names=("input_ids", "token_type_ids", "attention_mask"))
    return load_reranker(model, device=device, dtype=dtype, allow_pickle=allow_pickle,
                         trust_remote_code=trust_remote_code)


def save_reranker(model, tokenizer, path: str, max_length: int, activation: str = SIGMOID) -> None:
    """Saves a folder that `CrossEncoder(path)` loads: safetensors weights, tokenizer, activation, length."""
    model.config.sentence_transformers = {"activation_fn": activation}
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(path)
