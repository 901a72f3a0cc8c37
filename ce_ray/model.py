"""Loading a reranker the way sentence-transformers' CrossEncoder does, and saving one it loads.

A model is a local folder, a Hugging Face hub id, or an `s3://` folder (copied to a local cache first).
Safe by default: safetensors only unless `allow_pickle`, no repository code unless `trust_remote_code`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .io import check_s3_access, filesystem

SIGMOID = "torch.nn.modules.activation.Sigmoid"
IDENTITY = "torch.nn.modules.linear.Identity"


class ModelError(ValueError):
    """The model cannot be loaded safely or at all."""


def cache_dir() -> str:
    return os.environ.get("CE_RAY_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ce-ray"))


def local_model_path(model: str) -> str:
    """A local folder for `model`: itself, a copy of an `s3://` folder, or the hub id unchanged."""
    if model.startswith(("s3://", "s3a://")):
        return _copy_remote_folder(model)
    if model.startswith("file://"):
        model = model[len("file://") :]
    if os.path.isdir(model):
        return model
    if os.path.exists(model) or model.startswith((".", "/")) or model.count("/") > 1:
        raise ModelError(f"model folder {model} does not exist")
    return model  # a hub id; transformers resolves it (and fails clearly when the hub is unreachable)


def _copy_remote_folder(uri: str) -> str:
    """Copies an object-storage folder once into the local cache; a finished copy is marked complete."""
    import pyarrow.fs as pafs

    target = os.path.join(cache_dir(), "models", hashlib.sha256(uri.encode()).hexdigest()[:16])
    done = os.path.join(target, ".ce-ray-complete")
    if os.path.exists(done):
        return target
    check_s3_access(uri)
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    if not files:
        raise ModelError(f"model folder {uri} is empty or does not exist")
    partial = f"{target}.partial-{os.getpid()}"
    for info in files:
        rel = info.path[len(path.rstrip("/")) + 1 :]
        os.makedirs(os.path.dirname(os.path.join(partial, rel)) or partial, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(os.path.join(partial, rel), "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    open(os.path.join(partial, ".ce-ray-complete"), "w").close()
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.rename(partial, target)  # atomic: concurrent replicas either see the whole copy or none
    except OSError:
        import shutil

        shutil.rmtree(partial, ignore_errors=True)  # another process finished first
    return target


def check_safe(path: str, allow_pickle: bool, trust_remote_code: bool) -> None:
    """Refuses pickle-only weights and repository code before anything is loaded."""
    if not os.path.isdir(path):
        return  # hub ids: transformers enforces use_safetensors and trust_remote_code itself
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        raise ModelError(f"{path} has no config.json: not a Hugging Face model folder")
    with open(config_file) as f:
        config = json.load(f)
    if config.get("auto_map") and not trust_remote_code:
        raise ModelError(
            f"{path} needs code from its repository (auto_map in config.json); "
            "pass --trust-remote-code only if you trust it"
        )
    has_safetensors = bool(glob.glob(os.path.join(path, "*.safetensors")))
    has_pickle = bool(glob.glob(os.path.join(path, "*.bin")) + glob.glob(os.path.join(path, "*.pt")))
    if not has_safetensors and has_pickle and not allow_pickle:
        raise ModelError(
            f"{path} has only pickle weights (.bin/.pt), which can run code when loaded; "
            "convert them to safetensors, or pass --allow-pickle if you trust the file"
        )
    if not has_safetensors and not has_pickle:
        raise ModelError(f"{path} has no weights (*.safetensors)")


def activation_path(path: str, num_labels: int, trust_remote_code: bool = False) -> str:
    """The activation CrossEncoder applies: from the saved configs, else sigmoid for one label."""
    candidates = []
    if os.path.isdir(path):
        for name, keys in (
            ("config_sentence_transformers.json", ("activation_fn",)),
            ("config.json", ("sentence_transformers", "activation_fn")),
            ("config.json", ("sbert_ce_default_activation_function",)),
        ):
            file = os.path.join(path, name)
            if os.path.exists(file):
                with open(file) as f:
                    value = json.load(f)
                for key in keys:
                    value = value.get(key) if isinstance(value, dict) else None
                if value:
                    candidates.append(value)
    for found in candidates:
        if found.startswith("torch.") or trust_remote_code:
            return found
    return SIGMOID if num_labels == 1 else IDENTITY


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


def max_length_of(path: str, tokenizer, config) -> int:
    """CrossEncoder's rule: sentence_bert_config.json, else the tokenizer's, capped by the positions."""
    file = os.path.join(path, "sentence_bert_config.json") if os.path.isdir(path) else ""
    if file and os.path.exists(file):
        with open(file) as f:
            value = json.load(f).get("max_seq_length")
        if value:
            return int(value)
    length = tokenizer.model_max_length
    positions = getattr(config, "max_position_embeddings", None)
    if positions and positions > 0 and (length is None or length > positions):
        length = positions
    return int(length)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: float16 on a GPU, float32 on CPU.

    Half precision, for speed, must keep scores within 1e-2 of CrossEncoder.predict's fp32 ones. On the
    shared MiniLM-L12 reranker over all 6,165 WikiQA test pairs, bfloat16 missed that on 22 pairs (up to
    1.55e-2: its 8-bit mantissa) and float16 stayed within 2.0e-3, at the same tensor-core speed. float16's
    narrower range can overflow in some models: the Scorer then fails naming bfloat16 and float32.
    """
    if dtype != "auto":
        return getattr(torch, dtype)
    return torch.float16 if device.type == "cuda" else torch.float32


def device_and_dtype(device: Optional[str], dtype: str) -> tuple:
    """The torch device (the GPU where there is one, unless `device` says) and the dtype `pick_dtype` gives it."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return dev, pick_dtype(dtype, dev)


def load_tokenizer(model: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(local_model_path(model), trust_remote_code=trust_remote_code)


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
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = local_model_path(model)
    check_safe(path, allow_pickle, trust_remote_code)
    dev, torch_dtype = device_and_dtype(device, dtype)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        net = AutoModelForSequenceClassification.from_pretrained(
            path,
            config=config,
            dtype=torch_dtype,
            attn_implementation="sdpa",
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
        pad_id=tokenizer.pad_token_id or 0,
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
