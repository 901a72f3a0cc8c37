"""ce-ray's own forward pass of a BERT cross-encoder: a few torch layers, weights read straight from the
model's safetensors, no transformers.

A scoring replica is a fresh process, and transformers costs it seconds before its first batch: its lazy
import table, BERT's modules and what they pull in (torch.distributed, torch._dynamo, ...), 2.5 s of a
replica's 4.5 s start on a 2-core CPU; on the GPU machine a replica's start is a 1M-pair job's largest cost.
MiniLM and the other BERT rerankers are a few standard layers, built here from config.json with the query,
key and value projections in one matrix product. `load` takes a model only when it reproduces it exactly:
another architecture, position scheme or activation, or weights it does not expect or misses, and it returns
None (the replica then loads the model with transformers).

Training runs it too (`trainable`, with transformers' dropout in train mode): for a 6-layer model a
training step dispatches 423 operations instead of 494 and a forward pass takes 40% less host time, and a
step of 16 pairs on a GPU is little but that host work. `save` writes the trained weights under transformers'
names, with the source folder's config and tokenizer files, so the folder is CrossEncoder's, and a training
worker never imports transformers either (2.7 s of its start for the shared L12 on a 2-core CPU).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}  # transformers' "gelu" is the exact (erf) one, as F.gelu's
BUFFERS = {"bert.embeddings.position_ids", "bert.embeddings.token_type_ids"}  # saved by some versions; unused
# The config keys BertCrossEncoder reads without a default (transformers writes them all).
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_act")
# A BERT tokenizer's files, as `save` copies them; tokenizer_config.json holds the max length.
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "special_tokens_map.json",
                   "added_tokens.json")


class Layer(nn.Module):
    """One transformer layer, post-norm as BERT's: attention, add and norm, feed-forward, add and norm."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float, activation: str, dropout: float,
                 attention_dropout: float):
        super().__init__()
        self.heads, self.scale = heads, (hidden // heads) ** -0.5  # transformers' scale, to the last bit
        self.dropout, self.attention_dropout = nn.Dropout(dropout), attention_dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.up = nn.Linear(hidden, intermediate)
        self.down = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor], first_only: bool = False) -> torch.Tensor:
        """The layer's output for every token, or with `first_only` for the first token alone ([rows, 1,
        hidden]): what the last layer need give the pooler, which reads only that token."""
        rows, width, hidden = x.shape
        q, k, v = self.qkv(x).view(rows, width, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if first_only:  # every token's key and value, the first token's query: attention, FFN on one row
            q, x = q[:, :, :1], x[:, :1]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                                  dropout_p=self.attention_dropout if self.training else 0.0)
        attended = self.attention_out(attended.transpose(1, 2).reshape(rows, x.shape[1], hidden))
        x = self.attention_norm(self.dropout(attended) + x)
        return self.output_norm(self.dropout(self.down(self.activation(self.up(x)))) + x)


class BertCrossEncoder(nn.Module):
    """BertForSequenceClassification with one label: input ids (and token types, and a mask) in, logits
    [rows, 1] out. The mask is [rows, 1, 1, width] booleans (`model.attention_mask_for`) or the usual
    [rows, width] of ones and zeros; none for a batch without padding. Dropout where transformers has it."""

    model_type = "bert"

    def __init__(self, config: dict):
        super().__init__()
        hidden, dropout = config["hidden_size"], config.get("hidden_dropout_prob", 0.1)
        self.pad_id = config.get("pad_token_id") or 0
        # padding_idx as transformers': a [PAD] written in a text (the tokenizer reads it as the pad token) trains no
        # embedding there either.
        self.word = nn.Embedding(config["vocab_size"], hidden, padding_idx=config.get("pad_token_id"))
        self.position = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type = nn.Embedding(config["type_vocab_size"], hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            Layer(hidden, config["num_attention_heads"], config["intermediate_size"], config["layer_norm_eps"],
                  config["hidden_act"], dropout, config.get("attention_probs_dropout_prob", 0.1))
            for _ in range(config["num_hidden_layers"]))
        self.pooler = nn.Linear(hidden, hidden)
        classifier_dropout = config.get("classifier_dropout")
        self.classifier_dropout = nn.Dropout(dropout if classifier_dropout is None else classifier_dropout)
        self.classifier = nn.Linear(hidden, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Embeddings through their modules, not their weights: DeepSpeed's ZeRO-3 gathers a module's weights
        # when that module runs.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        types = self.token_type(torch.zeros_like(positions) if token_type_ids is None else token_type_ids)
        x = self.word(input_ids) + types + self.position(positions)  # transformers' order of the sums
        x = self.dropout(self.embedding_norm(x))
        if attention_mask is not None:
            if attention_mask.dim() == 2:
                attention_mask = attention_mask.bool()[:, None, None, :]
            if not torch.compiler.is_compiling():  # compiled, Inductor fuses the conversion into the graph
                attention_mask = attention_bias(attention_mask, self.attention_dtype(x.device.type))
        # The pooler reads the first token alone, so the last layer computes only its row when scoring: an
        # eighth less work for MiniLM-L6 at MS MARCO lengths, a sixteenth for L12. Training keeps every row,
        # so that dropout draws the same random numbers as transformers' model.
        last = len(self.layers) - 1
        for number, layer in enumerate(self.layers):
            x = layer(x, attention_mask, first_only=number == last and not self.training)
        return self.classifier(self.classifier_dropout(torch.tanh(self.pooler(x[:, 0]))))

    def attention_dtype(self, device_type: str) -> torch.dtype:
        """The dtype of the layers' queries: autocast's, or the weights'."""
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return self.layers[0].qkv.weight.dtype


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A [rows, 1, 1, width] boolean mask as the additive bias that scaled_dot_product_attention makes of it
    (0 where a key is seen, -inf where not), made once for every layer. Given the boolean mask, SDPA converts
    it in each layer, and on a GPU its memory-efficient kernel also copies a bias whose rows are not aligned
    to 8 elements into one that is: a few kernel launches a layer, one by one from the host, which is what a
    step of a small batch waits for. The bias is made at a width rounded up to 16 and sliced back, so the
    kernel takes it as it is; the attention is the same to the bit."""
    rows, width = mask.shape[0], mask.shape[-1]
    bias = torch.zeros(rows, 1, 1, -(-width // 16) * 16, dtype=dtype, device=mask.device)
    return bias[..., :width].masked_fill_(~mask, float("-inf"))


def weight_names(layers: int) -> dict:
    """This module's parameter names -> the checkpoint's names (a list: concatenated, in order)."""
    names = {"word.weight": ["bert.embeddings.word_embeddings.weight"],
             "position.weight": ["bert.embeddings.position_embeddings.weight"],
             "token_type.weight": ["bert.embeddings.token_type_embeddings.weight"]}
    for kind in ("weight", "bias"):
        names[f"embedding_norm.{kind}"] = [f"bert.embeddings.LayerNorm.{kind}"]
        names[f"pooler.{kind}"] = [f"bert.pooler.dense.{kind}"]
        names[f"classifier.{kind}"] = [f"classifier.{kind}"]
        for i in range(layers):
            layer = f"bert.encoder.layer.{i}."
            names[f"layers.{i}.qkv.{kind}"] = [f"{layer}attention.self.{p}.{kind}" for p in ("query", "key", "value")]
            names[f"layers.{i}.attention_out.{kind}"] = [f"{layer}attention.output.dense.{kind}"]
            names[f"layers.{i}.attention_norm.{kind}"] = [f"{layer}attention.output.LayerNorm.{kind}"]
            names[f"layers.{i}.up.{kind}"] = [f"{layer}intermediate.dense.{kind}"]
            names[f"layers.{i}.down.{kind}"] = [f"{layer}output.dense.{kind}"]
            names[f"layers.{i}.output_norm.{kind}"] = [f"{layer}output.LayerNorm.{kind}"]
    return names


def reproducible(config: dict) -> bool:
    """Whether `BertCrossEncoder` computes what transformers computes for a model of this config."""
    from .model_folder import label_count

    labels = label_count(config)
    return (config.get("model_type") == "bert" and all(key in config for key in REQUIRED) and not config.get("auto_map")
            and (config.get("architectures") or ["BertForSequenceClassification"]) == ["BertForSequenceClassification"]
            and config.get("position_embedding_type", "absolute") == "absolute"
            and config.get("hidden_act") in ACTIVATIONS and labels == 1
            and not config.get("is_decoder") and not config.get("add_cross_attention")
            and config.get("hidden_size", 0) % max(config.get("num_attention_heads", 0), 1) == 0)


def native_state(weights: dict, layers: int) -> Optional[dict]:
    """transformers' BertForSequenceClassification weights (of a model of `layers` layers) renamed, and the
    query, key and value ones concatenated, for BertCrossEncoder; None unless they are exactly the ones it has."""
    names = weight_names(layers)
    if set(weights) - BUFFERS != {name for parts in names.values() for name in parts}:
        return None  # missing weights (transformers would initialise them at random) or ones this module lacks
    return {mine: torch.cat([weights[name] for name in parts]) for mine, parts in names.items()}  # copies


def transformers_state(state: dict, layers: int) -> dict:
    """BertCrossEncoder's weights under transformers' names: `native_state` undone."""
    weights = {}
    for mine, parts in weight_names(layers).items():
        weights.update(zip(parts, state[mine].detach().chunk(len(parts))))
    return weights


def from_state(config: dict, weights: dict) -> Optional[BertCrossEncoder]:
    """A BertCrossEncoder holding `weights` (transformers' names), on the CPU; None if it does not reproduce
    the model."""
    state = native_state(weights, config["num_hidden_layers"]) if reproducible(config) else None
    if state is None:
        return None
    # Built on the CPU, initialised at random and then replaced (0.2 s for MiniLM-L12): building on the "meta"
    # device instead would import torch._dynamo for its initialisers, 1 s.
    model = BertCrossEncoder(config)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError:  # a shape that does not match the config
        return None
    return model


def from_transformers(model: nn.Module) -> Optional[BertCrossEncoder]:
    """A BertCrossEncoder with copies of the weights of transformers' `model`, in train mode; None if it does
    not reproduce it."""
    net = from_state(model.config.to_dict(), {k: v.detach() for k, v in model.state_dict().items()})
    return None if net is None else net.train()


def load(path: str, dtype: torch.dtype, device: torch.device) -> Optional[BertCrossEncoder]:
    """The model of the folder `path` as a BertCrossEncoder in `dtype` on `device`, in eval mode; None when
    this module does not reproduce it (see the module's docstring)."""
    from safetensors.torch import load_file

    weights_file = os.path.join(path, "model.safetensors")  # one file: a sharded model goes to transformers
    if not os.path.exists(weights_file):
        return None
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    model = from_state(config, load_file(weights_file))
    return None if model is None else model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def trainable(path: str) -> Optional[BertCrossEncoder]:
    """The model of the folder `path` to fine-tune: float32 on the CPU, in train mode; None when `load` would
    give none, or when the folder has no tokenizer_config.json (where `save` writes the max length)."""
    if not os.path.exists(os.path.join(path, "tokenizer_config.json")):
        return None
    model = load(path, torch.float32, torch.device("cpu"))
    return None if model is None else model.train().requires_grad_(True)


def save(state: dict, source: str, path: str, max_length: int, activation: str) -> None:
    """The folder `CrossEncoder(path)` loads, as transformers' `save_pretrained` of the model and tokenizer
    would write it, without transformers: `state` (a BertCrossEncoder's weights, on any device or dtype) in
    float32 under transformers' names, the `source` folder's config with the activation sentence-transformers
    reads, and its tokenizer files with `max_length` as the tokenizer's."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    # Copies: the query, key and value weights are chunks of one tensor, which safetensors refuses to write.
    weights = {name: tensor.to("cpu", torch.float32, copy=True)
               for name, tensor in transformers_state(state, config["num_hidden_layers"]).items()}
    save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    config.pop("torch_dtype", None)  # transformers 4's name of the weights' dtype
    config.update(dtype="float32", sentence_transformers={"activation_fn": activation})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(source, "tokenizer_config.json")) as f:
        tokenizer_config = json.load(f)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config | {"model_max_length": max_length}, f, indent=2)
    for name in TOKENIZER_FILES:  # the others as they are
        if name != "tokenizer_config.json" and os.path.exists(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(path, name))
