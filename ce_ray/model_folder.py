"""A model folder without torch: where it is (local, a copy of an `s3://` folder or a hub snapshot), whether it
is safe to load, and what CrossEncoder reads from it besides the weights (max length, activation, tokenizer,
prompt).

A job's driver needs only these, and importing torch would cost it seconds: `ce_ray.model` holds the rest.
"""

from __future__ import annotations

import errno
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from typing import Callable, Dict, Optional

from .config import ConfigError
from .messages import plural, setting_and_flag
from .storage import (absolute, check_s3_access, filesystem, leaves_its_folder, list_tree, local_path, object_stamp,
                      s3_endpoint)

SIGMOID = "torch.nn.modules.activation.Sigmoid"
IDENTITY = "torch.nn.modules.linear.Identity"
# How many times slower half precision ran than float32 on a CPU without instructions for it, the lesser of two
# runs: a replica of the shared L12 reranker scoring 100 WikiQA pairs on 2 busy cores of a Xeon kept to AVX2
# (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2), best of 3 and of 4 (float16 12x and 12x, bfloat16 20x and 9x);
# with its AMX, float16 ran as fast as float32 and bfloat16 3x faster (300 pairs, best of 6).
SLOWER_ON_CPU = {"float16": 12, "bfloat16": 9}
# CrossEncoder's own layout of a folder, beside transformers' files: its modules, their config, its settings.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
# The folder of a trained model's checkpoints, inside it, where train's storage_path is not given.
CHECKPOINTS = "checkpoints"


class ModelError(ValueError):
    """The model cannot be loaded safely or at all."""


# A model given by one of its files (config.json, the weights), locally or on S3.
MODEL_IS_A_FILE = ("model {model} is a file: give the model's folder (its config.json, weights and tokenizer files, as "
                   "CrossEncoder.save writes them)")


def cache_dir() -> str:
    return os.environ.get("CE_RAY_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ce-ray"))


def local_model_path(model: str, files: Optional[dict] = None) -> str:
    """A local folder for `model`: itself, a copy of an `s3://` folder, or a hub repository's snapshot.
    Every process that loads a model calls it, so each node of a cluster makes its own copy. `files`: an `s3://`
    model's objects as a job's driver listed them (`model_files`), the ones copied; listed now where not given."""
    if model.startswith(("s3://", "s3a://")):
        return _copy_remote_folder(model, files)
    model = local_path(model)
    if os.path.isdir(model):
        return model
    if os.path.exists(model):  # a weights or config file given for its folder
        raise ModelError(MODEL_IS_A_FILE.format(model=model))
    if model.startswith((".", "/")) or model.count("/") > 1:
        raise ModelError(f"model folder {model} does not exist")
    return _hub_snapshot(model)


def model_source(model: str) -> str:
    """What a job's workers load: a local folder by its absolute path (they may run in another working
    directory), an `s3://` or hub model by its name, which each node copies for itself (`local_model_path`); an
    `s3://` one in one spelling (`storage.absolute`), as a job records it."""
    if model.startswith(("s3://", "s3a://")):
        return absolute(model)
    return os.path.abspath(model) if "://" not in model and os.path.isdir(model) else model


# What loading a reranker reads of a hub repository: configs, tokenizer files, safetensors weights (and code,
# which runs only with trust_remote_code); not the ONNX or OpenVINO copies that can be most of its bytes.
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "*.py"]


@functools.lru_cache(maxsize=8)  # once per process: the driver and each replica resolve a model several times
def _hub_snapshot(model_id: str) -> str:
    """The local snapshot of a Hugging Face hub repository, in the hub's own cache (`HF_HOME`), downloaded once
    per machine as transformers would; with `HF_HUB_OFFLINE=1`, the cache alone. A folder, the model is then
    read as a local one is: CrossEncoder's activation, max length and prompt from its files, ce-ray's BERT,
    the tokenizer's recorded facts. A repository of pickle weights only brings them, for `allow_pickle`."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(model_id, allow_patterns=HUB_FILES)
        if not glob.glob(os.path.join(path, "*.safetensors")):
            path = snapshot_download(model_id, allow_patterns=HUB_FILES + ["pytorch_model*.bin"])
    except Exception as e:  # no such repository, no hub reachable, offline without a copy
        raise ModelError(hub_failure(model_id, e)) from e
    return path


def hub_failure(model_id: str, error: Exception) -> str:
    """Why a model given as a hub id could not be had, in one line, and what to do. Hugging Face's own message,
    where the hub could not be reached, is several lines on an internet connection to check, though many users are
    behind a firewall by design; and a mistyped relative folder (`models/reranker`) reads as a hub id."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError)

    if isinstance(error, RepositoryNotFoundError):  # the hub's answer; a gated repository's too
        return (f"model {model_id} is neither a local folder nor a repository of the Hugging Face hub that you may "
                "read (a private or gated one needs a token: `hf auth login` or HF_TOKEN)")
    if not isinstance(error, LocalEntryNotFoundError):  # an id the hub cannot name, a proxy's refusal
        return f"model {model_id} is not a local folder, and the Hugging Face hub could not give it: {one_line(error)}"
    # Not in the cache, and the hub off, out of reach, or answering with an error (down: a 5xx).
    cause = error.__cause__
    if constants.HF_HUB_OFFLINE or isinstance(cause, OfflineModeIsEnabled):
        hub = "the hub is off (HF_HUB_OFFLINE)"
    elif isinstance(cause, HfHubHTTPError):
        hub = f"the hub did not give it ({one_line(cause)})"
    else:
        hub = "the hub could not be reached" + (f" ({one_line(cause)})" if cause else "")
    return (f"model {model_id} is neither a local folder nor in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
            f"and {hub}: give a folder of it by its path (`hf download {model_id} --local-dir <folder>`, where "
            "the hub is reachable, makes one), or bring its download into that cache (HF_HOME or HF_HUB_CACHE set "
            "where it is)")


def one_line(error: BaseException) -> str:
    """An error's type and the first line of its message: the hub client's go on with links and advice."""
    return f"{type(error).__name__}: " + next((line.strip() for line in str(error).splitlines() if line.strip()), "")


def model_loading(model: str, load: Callable):
    """`load()`, where a model that cannot be loaded fails as a ModelError that says so in one line."""
    try:
        return load()
    except ModelError:  # says the model already
        raise
    except (OSError, ValueError) as e:  # not a folder, an unknown hub id, no hub reachable, an unknown model type
        # transformers' first line says what: the lines after it advise on upgrading it
        raise ModelError(f"cannot load model {model}: {one_line(e)}") from None


def model_files(model: str) -> Optional[dict]:
    """An `s3://` model's objects, each with its size and ETag, in one listing; None for any other model. A job's
    driver lists them once and its replicas copy exactly these: each replica listing the model as it started, a
    model written again while a job ran was scored with its new weights by the replicas that started later, one
    output of two models."""
    if not model.startswith(("s3://", "s3a://")):
        return None
    check_s3_access(model)
    fs, path = filesystem(model)
    files = list_tree(fs, path.rstrip("/"))  # one listing, with each object's ETag
    if not files:
        raise ModelError(f"model folder {model} is empty or does not exist")
    if list(files) == [path.rstrip("/")]:  # an object, named alone (it was copied as a file named '')
        raise ModelError(MODEL_IS_A_FILE.format(model=model))
    # A trained model's folder holds its run's checkpoints (train's default storage_path, <output>/checkpoints):
    # weights and optimizer state, several times the model's size, that loading it never reads, and that a run
    # going on rewrites (a copy of them failed as a model written again). The model is the folder's other files.
    root = path.rstrip("/")
    files = {name: info for name, info in files.items() if not name.startswith(f"{root}/{CHECKPOINTS}/")}
    outside = next((name[len(root) + 1 :] for name in files if leaves_its_folder(name[len(root) + 1 :])), None)
    if outside:  # copied, it was written where its name led, before any check of the model
        raise ModelError(f"model {model} holds an object whose name leads out of its folder, {outside!r}: it is "
                         "not copied; remove it from the store")
    return files


def model_version(model: str, files: Optional[dict] = None) -> str:
    """What tells the model a job loads (`model_source`'s) from the same folder or name written again: a resume must
    not add another model's scores to the ones an output holds. An `s3://` folder: its objects' names and ETags, as
    its copies are named; a hub repository: the commit of its snapshot; a local folder: the names, sizes and times
    of its files but hidden ones (the same on every node that mounts it; a trained model's checkpoints, a folder in
    it, are left out, as loading it leaves them). `files`: an `s3://` model's listing (`model_files`), where the job
    has it."""
    if model.startswith(("s3://", "s3a://")):
        return _listing_key(model, files or model_files(model))
    path = local_model_path(model)
    if path != local_path(model):  # a hub repository's snapshot: snapshots/<commit>
        return os.path.basename(path)
    stamps = sorted(f"{entry.name}\t{entry.stat().st_size}\t{entry.stat().st_mtime_ns}"
                    for entry in os.scandir(path) if entry.is_file() and not entry.name.startswith("."))
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:16]


def _copy_remote_folder(uri: str, files: Optional[dict] = None) -> str:
    """Copies an object-storage folder once into the local cache; a finished copy is marked complete. The copy is
    named by the folder's files as the store lists them now (names, sizes, ETags): a model written again under the
    same key (a run trained again into its output) is copied afresh, where the first copy was used forever. Its
    name starts with one of the folder's own, so that the folder's older copies are found and removed, where each
    rewrite left another whole copy forever. `files`: the listing to copy (`model_files`), where not listed now."""
    files = files or model_files(uri)
    fs, path = filesystem(uri)
    path = path.rstrip("/")
    folder = hashlib.sha256(f"{_endpoint_key()}\n{path}".encode()).hexdigest()[:16]
    target = os.path.join(cache_dir(), "models", f"{folder}-{_listing_key(uri, files)}")
    try:
        for _ in range(3):  # a copy removed by a process that listed newer objects, before this one held it
            if _hold(target):
                _remove_older_copies(target)
                return target
            _copy_files(uri, fs, path, files, target)
    except OSError as e:
        # A cache that cannot be written (a container's HOME of another user, read-only): Python's error, after a
        # traceback, and a last line that said --mode resume finishes the job, which failed the same way.
        if not str(e.filename or "").startswith(cache_dir()):
            raise
        raise ModelError(f"cannot copy model {uri} into ce-ray's cache: {e.strerror}: {e.filename} "
                         "(CE_RAY_CACHE: a folder to copy models into)") from None
    raise ModelError(f"model folder {uri} changed while it was copied to {target}: run the job again")


def _endpoint_key() -> str:
    """The S3 endpoint as a model's version and its copy's name take it: without a trailing `/`, which made the same
    objects another version, and a resume was refused as of another model. (Written so, the keys are those that
    earlier versions of ce-ray recorded.)"""
    return s3_endpoint().rstrip("/")


def _listing_key(uri: str, files: dict) -> str:
    """An `s3://` folder's objects as listed (`model_files`: names, sizes, ETags), in 16 hex digits."""
    listed = sorted(f"{name}\t{stamp}" for name, (_, stamp) in files.items())
    return hashlib.sha256("\n".join([_endpoint_key(), uri, *listed]).encode()).hexdigest()[:16]


def _copy_files(uri: str, fs, path: str, files, target: str) -> None:
    """Copies the listed objects, each as it was listed: an object written again since (another ETag) fails the
    copy, where the copy, named by the listing, would have held the new bytes."""
    import fcntl

    # Its own, each call: two threads of a process copying at once shared one, and one waited for ever on its lock
    # (its process's shared lock on the copy it became, held for life); a pid used again took a killed one's files.
    partial = f"{target}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.makedirs(partial)
    # Locked while this process copies: a copy whose process was killed (SIGKILL, out of memory) is unlocked, and
    # removed as a folder's older copies are (`_remove_older_copies`), where it stayed in the cache for good.
    lock = os.open(partial, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        _copy_locked(uri, fs, path, files, target, partial)
    finally:
        os.close(lock)


def _copy_locked(uri: str, fs, path: str, files, target: str, partial: str) -> None:
    from s3fs.utils import FileExpired

    s3 = fs.handler.fs  # s3fs's own file: its reads are held to the ETag of its look-up (GET If-Match)
    try:
        for name, (_, stamp) in files.items():
            rel = name[len(path) + 1 :]
            os.makedirs(os.path.dirname(os.path.join(partial, rel)) or partial, exist_ok=True)
            try:
                with s3.open(name, "rb") as src, open(os.path.join(partial, rel), "wb") as dst:
                    if object_stamp(src.details)[1] != stamp:
                        raise FileExpired(name, src.details.get("ETag"))
                    while chunk := src.read(1 << 24):
                        dst.write(chunk)
            except (FileExpired, FileNotFoundError):
                raise ModelError(f"model {uri} was written again after this job listed it ({rel} is not the object "
                                 "it listed): the job scores or trains with one model; run it again") from None
        open(os.path.join(partial, ".ce-ray-complete"), "w").close()
    except BaseException as e:
        # A cache that filled: each try left its part of a copy behind, and a write's error names no file.
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) and not e.filename:
            e.filename = os.path.dirname(target)
        raise
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.rename(partial, target)  # atomic: concurrent replicas either see the whole copy or none
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)  # another process finished first


# The copies this process uses, each with a shared lock on its folder held while the process lives: a replica or
# a training worker reads its model's files after it asked for them (and may again), so a copy is removed only
# where no process holds it. A lock held by a process ends with it, however it ends.
_HELD: dict = {}


def _hold(copy: str) -> bool:
    """Takes a shared lock on a finished copy for this process's life; False where there is none (not yet copied,
    or removed as an older copy meanwhile)."""
    import fcntl

    marker = os.path.join(copy, ".ce-ray-complete")
    if copy in _HELD:
        if os.path.exists(marker):
            return True
        os.close(_HELD.pop(copy))  # removed by hand meanwhile: copied again
    try:
        fd = os.open(copy, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return False
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a process removes it: then the folder is gone from its name
    try:
        kept = os.path.samestat(os.fstat(fd), os.stat(copy)) and os.path.exists(marker)
    except FileNotFoundError:
        kept = False
    if not kept:
        os.close(fd)
        return False
    _HELD[copy] = fd
    return True


# A copy begun this long ago holds its lock (`_copy_files` takes it at once); one begun since may not hold it yet.
ABANDONED_S = 60


def _begun_lately(partial: str) -> bool:
    try:
        return time.time() - os.stat(partial).st_mtime < ABANDONED_S
    except OSError:  # removed meanwhile
        return True


def _remove_older_copies(copy: str) -> None:
    """Removes the other finished copies of the same folder (its other versions) that no process holds: where a
    job still runs with the old weights, its copy stays, and goes with the first use of a copy after that job. So
    do copies of it that a killed process left part-way, which no process holds either."""
    import fcntl

    folder, _ = os.path.basename(copy).split("-")
    copies = os.path.join(os.path.dirname(copy), f"{folder}-{'[0-9a-f]' * 16}")
    for older in glob.glob(copies) + glob.glob(f"{copies}.partial-*") + glob.glob(f"{copies}.removed-*"):
        if older == copy or ".partial-" in os.path.basename(older) and _begun_lately(older):
            continue
        try:
            fd = os.open(older, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while any process holds it
            removed = f"{older}.removed-{os.getpid()}"
            os.rename(older, removed)  # out of its name first: a process that waited to hold it copies afresh
        except OSError:
            continue
        finally:
            os.close(fd)
        shutil.rmtree(removed, ignore_errors=True)


def read_json(file: str) -> dict:
    """A model folder's JSON file; one that does not parse fails naming it."""
    with open(file) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise ModelError(f"{file} is not valid JSON ({e})") from None


def is_sequence_classifier(architectures, auto_map: Optional[dict] = None) -> bool:
    """CrossEncoder's rule: a model saved as a sequence classifier has its classifier; any other (a base
    model's MaskedLM, a bi-encoder's BertModel, or none named) gets a new one-logit head. A repository's own class
    is one where its config's `auto_map` loads it as AutoModelForSequenceClassification, whatever its name: a
    reranker's `MyModel` was refused as having no classifier, where CrossEncoder scores with its trained head."""
    remote = str((auto_map or {}).get("AutoModelForSequenceClassification", "")).rsplit(".", 1)[-1]
    return any(name.endswith("ForSequenceClassification") or name == remote for name in architectures or ())


def saved_config(path: str) -> dict:
    """A model folder's config.json (empty where it has none)."""
    config_file = os.path.join(path, "config.json")
    return read_json(config_file) if os.path.exists(config_file) else {}


def saved_architectures(path: str) -> list:
    """The architectures a model folder's config.json names (empty where it names none)."""
    return saved_config(path).get("architectures") or []


def label_count(config: dict) -> int:
    """The logits a sequence classifier of this config.json gives, as transformers counts them (2 unless said)."""
    return len(config["id2label"]) if "id2label" in config else config.get("num_labels", 2)


def classifier_outputs(path: str) -> Optional[int]:
    """The logits of a folder's saved classifier head, from its safetensors headers: the rows of its last layer
    (BERT's `classifier.weight`, RoBERTa's `classifier.out_proj.weight`, a decoder's `score.weight`); None where
    there is none to read."""
    shapes = weight_shapes(path)
    return next((shapes[name][0] for name in ("classifier.weight", "classifier.out_proj.weight", "score.weight")
                 if name in shapes), None)


def check_single_logit(path: str, model: str) -> None:
    """Refuses a classifier of several labels (an NLI model's 3, a 2-way classifier's 2): ce-ray scores and trains
    rerankers of one logit, as CrossEncoder's rerankers are, and found out only in its workers otherwise. Where
    config.json names no architecture, its head's weights tell (its workers built a head of one logit and failed
    to load the saved one)."""
    config = saved_config(path)
    architectures = config.get("architectures")
    if not config or architectures and not is_sequence_classifier(architectures, config.get("auto_map")):
        return
    labels = label_count(config) if architectures else classifier_outputs(path)
    if labels not in (1, None):
        # A 2-way classifier's score is its softmax's of label 1, which one logit gives exactly: said how.
        conversion = ("; to score with it, save it with one logit, its classifier's second row less its first (weight "
                      "and bias): that logit's sigmoid is its softmax's score of label 1") if labels == 2 else ""
        raise ModelError(f"{model} is a classifier of {labels} labels: ce-ray scores and trains rerankers of one "
                         f"logit (CrossEncoder(..., num_labels=1)){conversion}; for a new reranker, start from its "
                         "base model")
    check_pad_token(path, model, config)


def check_pad_token(path: str, model: str, config: dict) -> None:
    """Refuses a decoder's classifier (its head named `score`, as transformers names a Qwen's or a Llama's) whose
    config.json has no pad_token_id: it scores each pair at its last token that is not padding, and without the id
    transformers fails every batch of more than one pair, in the workers, the job begun."""
    if config.get("pad_token_id") is None and "score" in weight_prefixes(path):
        raise ModelError(f"{model} is a decoder's classifier without a pad_token_id in its config.json: it cannot "
                         "score a batch of pairs; set pad_token_id there (its tokenizer's pad token's id)")


def is_bi_encoder(path: str) -> bool:
    """A sentence-transformers folder of a model that embeds texts one by one (its settings say SentenceTransformer
    or SparseEncoder; or, saying nothing of its kind, it pools tokens), not a CrossEncoder's."""
    settings, modules = (os.path.join(path, name) for name in ("config_sentence_transformers.json", "modules.json"))
    kind = read_json(settings).get("model_type") if os.path.exists(settings) else None
    if kind:
        return kind in ("SentenceTransformer", "SparseEncoder")
    return os.path.exists(modules) and any("Pooling" in str(module.get("type")) for module in read_json(modules))


def has_classifier_weights(path: str) -> bool:
    """Whether a folder's safetensors weights hold a classifier head (`classifier.*`, or `score.*` as decoders'
    classifiers name it); true where there are none to look in (pickle weights)."""
    return not glob.glob(os.path.join(path, "*.safetensors")) or bool(weight_prefixes(path) & {"classifier", "score"})


def has_classifier(path: str) -> bool:
    """Whether a model folder holds a reranker's classifier head: its config.json names a sequence classifier, or
    names no architecture and its weights hold one (as CrossEncoder and `check_scores` take it)."""
    config = saved_config(path)
    architectures = config.get("architectures")
    return (is_sequence_classifier(architectures, config.get("auto_map")) if architectures
            else has_classifier_weights(path))


def weight_shapes(path: str) -> dict:
    """The name and shape of each of a folder's safetensors weights, read from their headers alone; empty where
    there are none."""
    from safetensors import safe_open

    shapes = {}
    for file in glob.glob(os.path.join(path, "*.safetensors")):
        with safe_open(file, framework="numpy") as weights:
            shapes.update((name, weights.get_slice(name).get_shape()) for name in weights.keys())
    return shapes


def weight_prefixes(path: str) -> set:
    """The first parts of the names of a folder's safetensors weights (`bert`, `classifier`, ...)."""
    return {name.split(".")[0] for name in weight_shapes(path)}


def check_embeddings(path: str, tokenizer, config) -> None:
    """Refuses a tokenizer that gives ids past its model's embeddings: tokens added to it without resizing the model
    (`resize_token_embeddings`), token types that the model has no row for. A text with one failed the job mid-way,
    at that batch (on a GPU, a device-side assert), and a resume failed again."""
    tokens, words = len(tokenizer), getattr(config, "vocab_size", None)
    if words and tokens > words:
        raise ModelError(f"{path}: its tokenizer has {tokens:,} tokens, its model's embeddings {words:,} (vocab_size "
                         "in config.json): a text with one of the others fails the model; resize the model's "
                         "embeddings to the tokenizer (resize_token_embeddings) and save both")
    types, rows = tokenizer("a", "b").get("token_type_ids"), getattr(config, "type_vocab_size", None)
    if types and rows and max(types) >= rows:
        raise ModelError(f"{path}: its tokenizer gives a pair's second text token type {max(types)}, its model has "
                         f"{rows} (type_vocab_size in config.json): every pair fails the model; give it its own "
                         "model's tokenizer")


# A stack of numbered layers in a weight's name: its path before its first number and the number (`encoder.layer`
# and 3 of `encoder.layer.3.`, T5's `encoder.block` of `encoder.block.3.layer.0.`, GPT-2's `h` of `h.3.`).
LAYER = re.compile(r"^(.*?)\.(\d+)\.")


def _layers(names) -> Dict[str, set]:
    """The numbers of the layers of each stack that the weights `names` hold."""
    stacks: Dict[str, set] = {}
    for found in filter(None, map(LAYER.match, names)):
        stacks.setdefault(found[1], set()).add(int(found[2]))
    return stacks


def as_loaded(config):
    """`config` as the replicas and workers load the model: a base model (no sequence classifier) is given a new
    head of one logit, as CrossEncoder adds one to fine-tune it. A copy where it changes."""
    if is_sequence_classifier(config.architectures, getattr(config, "auto_map", None)):
        return config
    import copy

    config = copy.deepcopy(config)
    config.num_labels = 1
    return config


def check_weight_shapes(path: str, config) -> None:
    """Refuses weights of another model than its config.json describes (a config edited, or copied from another
    size of the model): weights of other shapes failed each replica as transformers loaded them, the job begun, and
    Ray started the replica again (40 s and hundreds of lines of tracebacks on a 2-core CPU, then `--mode resume
    finishes it`); layers the weights lack were drawn at random, and layers past the config's left out, without a
    word (MiniLM-L12's config.json over L6's weights: the same shapes, 6 random layers). The weights' headers
    against the model built from config.json on the meta device (no memory); a weight named otherwise (an older
    checkpoint's names, which transformers renames) is not compared, nor one transformers is told to leave out."""
    saved = weight_shapes(path)
    # No safetensors weights to read; repository code is not run here; quantized weights (bitsandbytes' 4 bits) are
    # stored packed, in shapes of their own.
    if not saved or getattr(config, "auto_map", None) or getattr(config, "quantization_config", None):
        return
    import torch
    from transformers import AutoModelForSequenceClassification

    new_head = not is_sequence_classifier(config.architectures)
    try:
        with torch.device("meta"):
            net = AutoModelForSequenceClassification.from_config(as_loaded(config))
    except Exception:  # a model transformers cannot build from its config alone: the replica's load says why
        return
    left_out = [re.compile(pattern) for pattern in getattr(net, "_keys_to_ignore_on_load_unexpected", None) or ()]
    # A base model's checkpoint (saved from BertModel) names its weights without the classifier's prefix (`bert.`):
    # names are compared without it.
    prefix = f"{net.base_model_prefix}."
    unprefixed = functools.partial(re.sub, f"^{re.escape(prefix)}", "")
    saved = {unprefixed(name): shape for name, shape in saved.items() if not any(p.search(name) for p in left_out)}
    own = net.state_dict()
    wrong = []
    for name, tensor in own.items():
        shape = saved.get(unprefixed(name))
        if shape is not None and list(shape) != list(tensor.shape):
            wrong.append((name, list(shape), list(tensor.shape)))
    if wrong and new_head and not any(name.startswith(prefix) for name, _, _ in wrong):
        # The 1 is ce-ray's: config.json, the one saved with the weights, names another kind of model.
        name, shape, _ = wrong[0]
        kind = f"a {', '.join(config.architectures)}" if config.architectures else "a model of no architecture"
        raise ModelError(f"{path}: its weights hold a head that is no reranker's one-logit classifier ({name} "
                         f"{shape}); {kind} is given a new one to be fine-tuned: start from its base model, saved "
                         "without that head")
    said = [f"{len(wrong)} weights' shapes differ, the first {wrong[0][0]} {wrong[0][1]} (config.json: {wrong[0][2]})"
            ] if wrong else []
    held = _layers(saved)
    for stack, layers in sorted(_layers(map(unprefixed, own)).items()):
        if stack in held and held[stack] != layers:
            said.append(f"{stack} has {plural(len(layers), 'layer')} by config.json, {len(held[stack])} in the weights")
    if said:
        raise ModelError(f"{path}: its weights are not the model its config.json describes: {'; '.join(said)}; give "
                         "the folder the config.json saved with them")


def check_scores(path: str, model: str) -> None:
    """Refuses to score with a model that has no classifier (its head would be drawn at random, as
    CrossEncoder draws one to fine-tune it, and every score would mean nothing) or more than one logit. Where
    config.json names no architecture, the weights tell."""
    architectures = saved_architectures(path)
    if any(name.endswith("ForCausalLM") for name in architectures or ()):
        raise ModelError(f"{model} is a {', '.join(architectures)}, a language model: CrossEncoder scores it by the "
                         "logits of its answer tokens (a LogitScore module, as Qwen3-Reranker is scored), which ce-ray "
                         "does not; score a conversion of it to a sequence classifier (one logit: the answer tokens' "
                         "difference), or fine-tune one from it (ce-ray train)")
    if is_bi_encoder(path):
        what = "a sentence-transformers bi-encoder (it embeds each text alone)"
    elif not has_classifier(path):
        what = f"a {', '.join(architectures)}" if architectures else "a model whose weights hold no classifier"
    else:
        return check_single_logit(path, model)
    raise ModelError(f"{model} is {what}, not a sequence classifier: it has no reranker's classifier, and its scores "
                     "would be random; fine-tune it first (ce-ray train)")


def _checkpoint_model_within(path: str) -> Optional[str]:
    """The model of the latest ce-ray train checkpoint (`checkpoint_0000010/model`) that a folder is or holds: one
    checkpoint, a run's folder of them, the checkpoints' folder above it, or a run's output that published no model
    yet (`<output>/checkpoints/<run>/checkpoint_*`, a run stopped). `--model` given one of them was told it was no
    model folder alone."""
    base = glob.escape(path)
    found = [model for pattern in ("", "/checkpoint_*", "/*/checkpoint_*", f"/{CHECKPOINTS}/*/checkpoint_*")
             for model in glob.glob(f"{base}{pattern}/model") if os.path.isfile(f"{model}/config.json")]
    return os.path.normpath(max(found, key=lambda model: os.stat(f"{model}/config.json").st_mtime)) if found else None


def check_safe(path: str, allow_pickle: bool, trust_remote_code: bool) -> None:
    """Refuses pickle-only weights and repository code before anything is loaded."""
    if not os.path.isdir(path):
        return  # not a folder: transformers enforces use_safetensors and trust_remote_code itself
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        within = _checkpoint_model_within(path)
        raise ModelError(f"{path} has no config.json: not a Hugging Face model folder" + (
            f"; it holds ce-ray train's checkpoints, whose model is {within} (the run's --output holds the model it "
            "published)" if within else ""))
    config = read_json(config_file)
    if config.get("auto_map") and not trust_remote_code:
        raise ModelError(
            f"{path} needs code from its repository (auto_map in config.json); "
            f"give {setting_and_flag('trust_remote_code', True)} only if you trust it"
        )
    # The weights transformers loads (`model.safetensors`, or the shards its index names): another safetensors file
    # beside pickle weights (an adapter's) passed as safe, and the job failed once begun, finding none.
    # An index's shards of pickle (`weight_map` naming `pytorch_model.bin`) passed as safe: transformers loads them.
    index = os.path.join(path, "model.safetensors.index.json")
    shards = set((read_json(index).get("weight_map") or {}).values()) if os.path.isfile(index) else set()
    has_safetensors = os.path.isfile(os.path.join(path, "model.safetensors")) or bool(shards) and all(
        str(shard).endswith(".safetensors") for shard in shards)
    has_pickle = bool(glob.glob(os.path.join(path, "*.bin")) + glob.glob(os.path.join(path, "*.pt")))
    if not has_safetensors and has_pickle and not allow_pickle:
        raise ModelError(
            f"{path} has only pickle weights (.bin/.pt), which can run code when loaded; "
            f"convert them to safetensors, or give {setting_and_flag('allow_pickle', True)} if you trust the file"
        )
    if not has_safetensors and not has_pickle:
        raise ModelError(f"{path} has no weights (model.safetensors)")
    check_weights_files(path)
    if not trust_remote_code and not any(glob.glob(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise ModelError(NO_TOKENIZER.format(path=path))  # said here, before Ray starts, not in `load_tokenizer`


# The files a tokenizer of transformers is saved in, of which a folder with a tokenizer holds one or more (a model
# saved alone, `save_pretrained` of the model, has none). `tokenizer_config.json` alone may be one of its special
# tokens alone, which `load_tokenizer` refuses, or a whole one: a character's or a byte's (CANINE, ByT5).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt", "*.model",
                   "*.spm", "bpe.codes")
NO_TOKENIZER = ("{path} has no tokenizer files (tokenizer.json, or vocab.txt and the like): its tokenizer would know "
                "no word; save the model's tokenizer into it (tokenizer.save_pretrained(folder))")


def check_weights_files(path: str) -> None:
    """A safetensors file cut short (an interrupted copy or download) would fail each replica as it starts,
    the job's output already begun: its header, read here (not its tensors), says whether the file holds them."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        try:
            with safe_open(file, framework="numpy"):
                pass
        except SafetensorError as e:
            raise ModelError(f"{file} is not a whole safetensors file ({e}): copy or download it again") from None


def activation_path(path: str, num_labels: int, trust_remote_code: bool = False) -> str:
    """The activation CrossEncoder applies: from the saved configs, else sigmoid for one label."""
    config = saved_config(path)
    block = config.get("sentence_transformers") or {}
    # CrossEncoder reads sentence-transformers 3's key only where the block names no activation: one it does not
    # trust (not torch's, without trust_remote_code) gives the default, not the old key's
    older = config.get("sbert_ce_default_activation_function")
    candidates = [crossencoder_settings(path).get("activation_fn"),
                  block["activation_fn"] if "activation_fn" in block else older]
    candidates = [found for found in candidates if isinstance(found, str) and found]
    for found in candidates:
        if found.startswith("torch.") or trust_remote_code:
            return found
    return SIGMOID if num_labels == 1 else IDENTITY


def dtype_name(dtype: str, on_gpu: bool) -> str:
    """The dtype a replica computes in (`model.pick_dtype` makes it torch's): `dtype`, or for `auto` float16 on a
    GPU and float32 on CPU. Here, apart from torch, so that a job's driver can say it."""
    if dtype != "auto":
        return dtype
    return "float16" if on_gpu else "float32"


def half_precision_on_cpu(dtype: str, setting: str, instead: str) -> str:
    """A note for half precision (float16, bfloat16) asked of CPUs, else "": a CPU runs it fast only with
    instructions for it (AMX, AVX-512 FP16 or BF16), which many lack, a laptop's among them (`SLOWER_ON_CPU`).
    `setting`: how the user asked for it; `instead`: the setting that gives float32."""
    if dtype not in SLOWER_ON_CPU:
        return ""
    kind = "FP16" if dtype == "float16" else "BF16"
    return (f"ce-ray: note: {setting} on CPUs is fast only where they have {dtype} instructions (AMX, AVX-512 "
            f"{kind}); without them a forward pass ran {SLOWER_ON_CPU[dtype]}x slower than in float32 ({instead})")


def crossencoder_settings(path: str) -> dict:
    """A folder's config_sentence_transformers.json (activation, prompts) where CrossEncoder reads it: in its own
    layout, modules.json beside it. sentence-transformers 6 builds a folder without modules.json from its
    transformers files alone (config.json's `sentence_transformers` activation still counts), the settings file
    unread, so its prompt and activation there would score otherwise than `predict`; {} then."""
    settings, modules = (os.path.join(path, name) for name in ("config_sentence_transformers.json", "modules.json"))
    return read_json(settings) if os.path.isfile(settings) and os.path.isfile(modules) else {}


def keep_layout(base: str, saved: str, activation: str, max_length: int) -> None:
    """Gives the folder of a model trained from `base` the files of CrossEncoder's layout that `base` had, as
    CrossEncoder.save keeps them for a model CrossEncoderTrainer trained: its settings (sentence-transformers'
    `prompts` and `default_prompt_name`) with the trained model's activation, its module config (the tokenizer's
    settings, `do_lower_case` among them) with the trained max length. Without them the trained model's queries
    went without the prompt that the base put before each, and a base that lowercased by its module config over
    a cased tokenizer (as training did) gave a model that read each capitalised word as [UNK]."""
    files = {name: os.path.join(base, name) for name in SENTENCE_TRANSFORMERS_FILES}
    # Not CrossEncoder's layout (config.json holds it all), or a bi-encoder's, whose pooling modules would make
    # the trained reranker one (`is_bi_encoder`), which scoring refuses.
    if not os.path.isfile(files["modules.json"]) or is_bi_encoder(base):
        return
    module = read_json(files["sentence_bert_config.json"]) if os.path.isfile(files["sentence_bert_config.json"]) else {}
    if "max_seq_length" in module:  # CrossEncoder's max length before the tokenizer's
        module["max_seq_length"] = max_length
    # and those that come before it (`max_length_of`): the tokenizer's arguments', the processing's
    for arguments in (module.get("tokenizer_args"), module.get("processor_kwargs")):
        if isinstance(arguments, dict) and "model_max_length" in arguments:
            arguments["model_max_length"] = max_length
    for bucket in ("text", "common"):
        processing = (module.get("processing_kwargs") or {}).get(bucket)
        if isinstance(processing, dict) and "max_length" in processing:
            processing["max_length"] = max_length
    written = {"modules.json": read_json(files["modules.json"]), "sentence_bert_config.json": module}
    settings = crossencoder_settings(base)
    if settings:
        written["config_sentence_transformers.json"] = settings | {"activation_fn": activation}
    for name, content in written.items():
        with open(os.path.join(saved, name), "w") as f:
            json.dump(content, f, indent=2)


def query_prompt(path: str, prompt: Optional[str] = None, prompt_name: Optional[str] = None) -> str:
    """The text put before each query, as CrossEncoder.predict resolves its `prompt` and `prompt_name`: the
    prompt given, else the model's saved prompt of that name, else its default prompt
    (config_sentence_transformers.json: `prompts`, `default_prompt_name`), else none ("")."""
    if prompt is not None and prompt_name is not None:
        raise ConfigError(f"set {setting_and_flag('prompt')} or {setting_and_flag('prompt_name')}, not both")
    if prompt is not None:
        return prompt
    saved = crossencoder_settings(path)
    prompts = saved.get("prompts") or {}
    if prompt_name is not None:
        if prompt_name not in prompts:
            raise ConfigError(f"{setting_and_flag('prompt_name')} {prompt_name!r}: the model's prompts are "
                              f"{sorted(prompts)}")
        return prompts[prompt_name]
    return prompts.get(saved.get("default_prompt_name"), "") or ""


# Model types whose positions are a learned table of max_position_embeddings rows: a longer input indexes past
# it (an IndexError on a CPU, a device-side assert that ends the process on a GPU). RoBERTa's kin number their
# positions from pad_token_id + 1. Rotary (ModernBERT) and relative (DeBERTa-v2) positions have no such bound.
OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "camembert", "mpnet", "data2vec-text", "xlm-roberta-xl",
                              "ibert", "longformer"})
LEARNED_POSITIONS = OFFSET_POSITIONS | {"bert", "electra", "distilbert", "albert", "ernie", "megatron-bert",
                                        "mobilebert"}


def position_limit(path: str) -> Optional[int]:
    """The most tokens a model's learned positions can take; None where nothing bounds them."""
    config = saved_config(path)
    positions, model_type = config.get("max_position_embeddings"), config.get("model_type")
    if not positions or model_type not in LEARNED_POSITIONS:
        return None
    return positions - ((config.get("pad_token_id") or 0) + 1 if model_type in OFFSET_POSITIONS else 0)


def check_max_length(path: str, model: str, max_length: Optional[int]) -> None:
    """Refuses a max_length past the tokens a model's learned positions can take, before any work."""
    limit = position_limit(path)
    if max_length is not None and limit is not None and max_length > limit:
        raise ConfigError(f"{setting_and_flag('max_length')} {max_length}: {model} takes at most {limit} tokens (its "
                          "position table)")


# transformers' model_max_length where a tokenizer's files name none (1e30): no length at all
NO_MAX_LENGTH = 1 << 31


def usable_max_length(path: str, model: str, own: int) -> int:
    """The model's own max length (CrossEncoder's rule, `max_length_of`) within its position table: a RoBERTa
    whose tokenizer names no length gets its 514 positions, two of them before the first token's, and a long
    pair then failed the job (as it fails CrossEncoder.predict). A model of no length and no position table (an
    XLNet whose tokenizer names none) is refused: it failed the job with an OverflowError in its tokenize tasks,
    where CrossEncoder.predict cuts no pair, and ce-ray's batches of tokens want a bound."""
    limit = position_limit(path)
    if limit is None and own >= NO_MAX_LENGTH:
        raise ModelError(f"{model} names no max length (neither its tokenizer's files, model_max_length, nor its "
                         f"config, max_position_embeddings): give {setting_and_flag('max_length')}, the tokens its "
                         "pairs are cut at")
    if limit is None or own <= limit:
        return own
    print(f"ce-ray: note: {model}'s own max length, {own}, is past its position table: pairs are cut at {limit} "
          "tokens", file=sys.stderr, flush=True)
    return limit


# sentence-transformers' files of its Transformer module's settings, the first found read (its older names after)
MODULE_SETTINGS_FILES = ("sentence_bert_config.json", "sentence_roberta_config.json",
                         "sentence_distilbert_config.json", "sentence_camembert_config.json",
                         "sentence_albert_config.json", "sentence_xlm-roberta_config.json", "sentence_xlnet_config.json")


def module_settings(path: str) -> dict:
    """The settings of a folder's Transformer module (sentence_bert_config.json) where CrossEncoder reads them: in
    its own layout, modules.json beside them, as `crossencoder_settings`; {} elsewhere."""
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "modules.json")):
        return {}
    files = [os.path.join(path, name) for name in MODULE_SETTINGS_FILES]
    return next((read_json(file) for file in files if os.path.isfile(file)), {})


def tokenizer_arguments(settings: dict) -> dict:
    """What CrossEncoder gives its tokenizer's from_pretrained from the module's `settings`: their
    processor_kwargs (tokenizer_args, the older name, in their place), and max_seq_length as model_max_length
    where those name none. No repository code: sentence-transformers lets no settings file allow it."""
    arguments = dict(settings.get("tokenizer_args", settings.get("processor_kwargs")) or {})
    arguments.pop("trust_remote_code", None)
    if settings.get("max_seq_length") and "model_max_length" not in arguments:
        arguments["model_max_length"] = settings["max_seq_length"]
    return arguments


def pair_processing(settings: dict) -> dict:
    """What CrossEncoder's call of its tokenizer takes of the module's `processing_kwargs`: their `text` settings,
    then their `common` ones over them (sentence-transformers 6 calls a tokenizer with `{**text, **common}`)."""
    processing = settings.get("processing_kwargs") or {}
    return {**(processing.get("text") or {}), **(processing.get("common") or {})}


def check_pair_cutting(path: str, model: str) -> None:
    """Refuses, before any work, a model whose saved settings cut or build its pairs otherwise than ce-ray does
    (`longest_first`, CrossEncoder's default, with the special tokens): its pairs would be scored as others than
    `predict` scores (`only_second` keeps a query whole and cuts the document alone)."""
    processing = pair_processing(module_settings(path))
    cut = processing.get("truncation", "longest_first")
    if cut is not True and cut != "longest_first":
        raise ModelError(f"{model} cuts its pairs with truncation {cut!r} (processing_kwargs in its "
                         "sentence_bert_config.json), which ce-ray does not reproduce: it cuts them longest_first, as "
                         "CrossEncoder does by default; remove the setting to score it so")
    if processing.get("add_special_tokens", True) is not True:
        raise ModelError(f"{model} builds its pairs without special tokens (processing_kwargs in its "
                         "sentence_bert_config.json), which ce-ray does not reproduce")


def max_length_of(path: str, tokenizer, config) -> int:
    """CrossEncoder's rule for the `tokenizer` that `load_tokenizer` gives: the module's processing_kwargs'
    max_length (`pair_processing`), else the tokenizer's (its model_max_length, which the module's settings may
    give), capped by the positions unless the settings gave it. The settings only in CrossEncoder's layout,
    modules.json beside them: a folder without builds from its transformers files alone (`crossencoder_settings`),
    and its pairs were cut at another length than `predict` cuts them."""
    settings = module_settings(path)
    processing = pair_processing(settings)
    if processing.get("max_length"):
        return int(processing["max_length"])
    length = tokenizer.model_max_length
    positions = getattr(config, "max_position_embeddings", None)
    if "model_max_length" not in tokenizer_arguments(settings) and positions and positions > 0 and (
            length is None or length > positions):
        length = positions
    return int(length)


def load_tokenizer(model: str, trust_remote_code: bool = False):
    """The model's tokenizer, as CrossEncoder loads it (`tokenizer_arguments`, and a lowercasing first where the
    module's settings say do_lower_case over a tokenizer that does not lowercase). A folder without its tokenizer's
    files (a model saved alone, `save_pretrained` of the model but not of its tokenizer) is refused: transformers
    makes it an empty tokenizer that knows its special tokens alone, every word then [UNK], and CrossEncoder scores
    that, text unseen, without a word of warning."""
    from transformers import AutoTokenizer

    path = local_model_path(model)
    settings = module_settings(path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                              **tokenizer_arguments(settings))
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ModelError(NO_TOKENIZER.format(path=path))
    if settings.get("do_lower_case"):
        _lowercase_first(tokenizer)
    return tokenizer


def _lowercase_first(tokenizer) -> None:
    """A Lowercase normalizer before the tokenizer's own, where it has none, as sentence-transformers adds it (a
    BertNormalizer that lowercases is no Lowercase to it: it adds one there too). The plan of such a tokenizer is
    no nanotoken one (`fast_tokenize`): its pairs are encoded by the Hugging Face tokenizer."""
    from tokenizers.normalizers import Lowercase, Sequence

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer (transformers 4): its own setting, as sentence-transformers sets it
        try:
            tokenizer.do_lower_case = True
        except AttributeError:
            tokenizer.basic_tokenizer.do_lower_case = True
        return
    normalizer = backend.normalizer
    parts = list(normalizer) if isinstance(normalizer, Sequence) else [] if normalizer is None else [normalizer]
    if not any(isinstance(part, Lowercase) for part in parts):
        backend.normalizer = Sequence([Lowercase(), *parts])
