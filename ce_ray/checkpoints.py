"""A training run's checkpoints and its record: the files a checkpoint holds (written whole, or not at all), each
worker's random state in it, where Ray Train keeps them (`run_storage`), and the record of the run's settings and
training files (`claim_run`): a run of the same name resumes from the checkpoints only where both are the same."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import unicodedata
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow.fs as pafs

from .config import ConfigError, TrainConfig
from .messages import briefly, plural, setting_and_flag
from .model_folder import CHECKPOINTS
from .storage import (absolute, content_digest, filesystem, in_parallel, is_remote, join, leaves_its_folder,
                      upload_folder, write_bytes_atomic)
from .input_files import is_json
from .train_data import training_files

PROGRESS = "progress.json"
STATE = "state.pt"
MODEL = "model"
DS_TAG = "zero"
FILE_LIST = "ce-ray-files-{rank}.json"  # a checkpoint's files as each rank wrote them: {path: bytes}
RANDOM_STATE = "ce-ray-random-{rank}.pt"  # each rank's random generators at the checkpoint (`random_state`)


class CheckpointUploadError(OSError):
    """A checkpoint that the store did not take whole."""


class IncompleteCheckpoint(FileNotFoundError):
    """A checkpoint that lacks some of its files."""


# ---------------------------------------------------------------- checkpoints: written whole, or not at all


def write_file_list(folder: str, rank: int) -> None:
    """Writes the list of the files this rank put in a checkpoint's `folder`, with their sizes, so that a
    checkpoint missing any of them is known for what it is when it is read (`missing_files`)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            local = os.path.join(root, name)
            files[os.path.relpath(local, folder).replace(os.sep, "/")] = os.path.getsize(local)
    with open(os.path.join(folder, FILE_LIST.format(rank=rank)), "w") as f:
        json.dump(files, f)


def missing_files(folder: str, deepspeed: bool) -> List[str]:
    """The files of a checkpoint that its folder lacks (or holds at another size), by the lists its ranks
    wrote: progress.json says how many. A checkpoint written before the lists has the files that the run
    reads checked."""
    def absent(path: str, size: Optional[int] = None) -> bool:
        local = os.path.join(folder, path)
        return not os.path.isfile(local) or size is not None and os.path.getsize(local) != size

    if absent(PROGRESS):
        return [PROGRESS]
    with open(os.path.join(folder, PROGRESS)) as f:
        lists = json.load(f).get("file_lists")
    if lists is None:
        needed = [f"{MODEL}/config.json"] + ([] if deepspeed else [STATE, f"{MODEL}/model.safetensors"])
        return [path for path in needed if absent(path)]
    missing = []
    for rank in range(lists):
        name = FILE_LIST.format(rank=rank)
        if absent(name):
            missing.append(name)
            continue
        with open(os.path.join(folder, name)) as f:
            missing += [path for path, size in json.load(f).items() if absent(path, size)]
    return missing


def check_whole(folder: str, deepspeed: bool, shown: str) -> None:
    """Refuses a checkpoint that lacks files: a store that failed some of its uploads, silently, as Ray Train's
    own upload let it (a run resumed from it would fail on a missing file or, worse, save a model without its
    weights or configuration)."""
    missing = missing_files(folder, deepspeed)
    if missing:
        raise IncompleteCheckpoint(
            f"the checkpoint {shown} lacks {briefly(missing)}: it was not written whole to the store and is not "
            f"loaded. Delete the run's folder ({posixpath.dirname(shown)}) or give another "
            f"{setting_and_flag('run_name')} to start afresh")


def checkpoint_folder(checkpoint, shown: str, folder: Optional[str] = None) -> str:
    """`checkpoint.to_directory(folder)`, its files' names checked first: an object store's key may lead out of the
    checkpoint's folder (`checkpoint_0000002/../../../x`, planted in the run's storage), and Ray's copy (pyarrow's
    `copy_files`) wrote it where it led, anywhere the run's user may write."""
    base = checkpoint.path.rstrip("/")
    if not isinstance(checkpoint.filesystem, pafs.LocalFileSystem):  # a local folder's names are its files'
        for info in checkpoint.filesystem.get_file_info(pafs.FileSelector(base, recursive=True)):
            name = info.path[len(base) + 1 :]
            if info.type == pafs.FileType.File and not name.endswith("/") and leaves_its_folder(name):  # no marker
                raise IncompleteCheckpoint(
                    f"the checkpoint {shown} holds a file whose name leads out of its folder, "
                    f"{name!r}: it is not loaded. Remove it from the store, or give another "
                    f"{setting_and_flag('run_name')} to start afresh")
    return checkpoint.to_directory(folder)


def upload_checkpoint(checkpoint, dir_name: str, shown: str):
    """Ray Train's `checkpoint_upload_fn` for object storage: the checkpoint's files go up one by one, and one
    that the store does not take fails the report, so that Ray Train records no checkpoint (and restarts from
    the last one, within max_failures). Its own upload, `pyarrow.fs.copy_files`, drops such a failure: a
    checkpoint without its weights was logged "Checkpoint successfully created", recorded, and resumed from."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    path = storage.build_checkpoint_path_from_name(dir_name)
    try:
        upload_folder(checkpoint.path, storage.storage_filesystem, path)
    except Exception as e:
        raise CheckpointUploadError(f"the checkpoint {shown}/{dir_name} was not written whole to the store "
                                    f"({type(e).__name__}: {e}); Ray Train records no checkpoint of it") from e
    return ray.train.Checkpoint(path=path, filesystem=storage.storage_filesystem)


# ---------------------------------------------------------------- workers: random state


def random_state(device) -> dict:
    """The state of this process's random generators: torch's (dropout draws from it; the device's too on a
    GPU), numpy's and Python's global ones. A checkpoint holds each rank's, so that a resumed run draws the
    dropout masks the run would have drawn had it not stopped."""
    import random

    import torch

    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             # torch.load's weights_only takes tensors, not numpy arrays
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def worker_seed(seed: int, rank: int) -> int:
    """The seed of a worker's dropout: the run's seed on rank 0 (one worker draws as it did), the next ones on
    the others. Seeded alike, every rank drew the same masks for its other rows: the same units dropped in every
    row at a place of the batches, where the run's batch should drop them independently, as one device would."""
    return seed + rank


def restore_random_state(state: dict, device) -> None:
    import random

    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------- runs: where checkpoints go, which run they are


def whole_checkpoint(checkpoint, folder: str, config: TrainConfig, run_uri: str) -> str:
    """A checkpoint of the run copied to `folder`, refused where it lacks files: its model is the output."""
    shown = f"{run_uri}/{os.path.basename(checkpoint.path)}"
    checkpoint_dir = checkpoint_folder(checkpoint, shown, folder)
    check_whole(checkpoint_dir, bool(config.deepspeed), shown)
    return checkpoint_dir


def best_kept(config: TrainConfig) -> dict:
    """Ray Train keeps the best checkpoints by the eval metric (and the latest, which a restart resumes from)."""
    if not config.best_metric:
        return {}
    return {"checkpoint_score_attribute": f"eval_{config.best_metric}", "checkpoint_score_order": "max"}


def best_checkpoint(result, config: TrainConfig):
    """(checkpoint, metrics) of the best checkpoint by best_metric, the later of equals; None without it."""
    if not config.best_metric:
        return None
    name = f"eval_{config.best_metric}"
    scored = [(c, m) for c, m in result.best_checkpoints or [] if m.get(name) is not None]
    return max(scored, key=lambda cm: (cm[1][name], cm[1]["step"]), default=None)


def run_storage(config: TrainConfig):
    """Ray Train's storage (filesystem, path), run name, and the run's folder as the user names it;
    checkpoints default to <output>/checkpoints."""
    uri = config.storage_path or join(config.output, CHECKPOINTS)
    fs, path = filesystem(uri)
    name = config.run_name or _ascii_name(os.path.basename(config.output.rstrip("/")))
    return fs, path, name, join(uri, name)


def _ascii_name(name: str) -> str:
    """A run's default name, its output folder's, in ASCII: Ray Train tags its metrics with it, and one of other
    letters (an output `modèle`) failed the run once Ray Train had started, and the same command again. Where it is
    not, its letters without their accents (`modele`) and a digest of it, which tells `modèle` from `modéle`."""
    if name.isascii():
        return name or "ce-ray-train"
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return f"{plain or 'ce-ray-train'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


# The settings that make a run's checkpoints what they are: a run of the same name resumes from them only with
# the same (`claim_run`).
RUN_SETTINGS = ("model", "max_length", "train_data", "input_format", "column_names", "query_column",
                "document_column", "label_column", "negative_columns", "train_split", "hard_negatives",
                "num_workers", "epochs", "max_steps", "batch_size", "grad_accum", "lr", "weight_decay",
                "warmup_ratio", "max_grad_norm", "pos_weight", "seed", "group_by_length", "length_window", "deepspeed")
RUN_FILE = "ce-ray-run.json"
DATA_SETTINGS = ("train_data", "eval_data")  # recorded as `storage.absolute` writes them: a path, or one spelling
# And what the run measures its checkpoints on, and by: they change no trained row, but a run's figures are of its
# eval data, and best_metric compares its checkpoints by them. A run resumed (or a finished one run again) with
# other eval data kept the figures measured on the former under the latter's name, on screen and in its model card,
# and chose among checkpoints measured on two sets. Compared only where the record holds them (an earlier ce-ray's
# record does not, and its run resumes as then), and where the run has eval data (without, it measures nothing).
EVAL_SETTINGS = ("eval_data", "eval_split", "eval_top_k", "eval_max_queries", "best_metric")
# And whether its passes train in bf16 (`train.uses_bf16`: `bf16` or DeepSpeed's, unset on GPUs): a run resumed in
# another precision trained the steps after its checkpoint so, with no word, and its card said the other for them
# all. Known once the run knows whether it has GPUs (after Ray's start: `claim_precision`); compared only where the
# record holds it (an earlier ce-ray's does not, and its run resumes as then).
PRECISION = "bf16_passes"
# And the implementation it trains with (`implementation`): ce-ray's BERT holds a layer's query, key and value weights
# in one tensor, transformers' in three, and the optimizer's state of one does not load into the other (`loaded state
# dict contains a parameter group that doesn't match`, in every worker, each retry). Compared only where the record
# holds it (an earlier ce-ray's does not, and its run resumes as then).
CODE_SETTINGS = ("implementation",)
# In the record too: the training data's files and their stamps (`train_data.training_files`). A resumed run skips
# the batches its checkpoint trained, by their place in the data: files rewritten, added or removed under the same
# train_data would put other rows in those places (rows trained twice, rows never trained).
TRAIN_FILES = "train_files"
# And the sha256 of each local training file's bytes (`storage.content_digest`): a file only touched or copied again
# (another modification time, the same bytes) is the same data, and its run resumes. S3 objects go by their ETag.
TRAIN_DIGESTS = "train_digests"


# What a run of other settings or data names to keep its own checkpoints apart from an earlier run's.
OTHER_RUN = f"{setting_and_flag('run_name')} or {setting_and_flag('output')}"


def other_run(config: TrainConfig) -> str:
    """`OTHER_RUN`, or run_name alone where a storage_path is set: the checkpoints go there, not under the output, and
    a run named by its output's folder (`run_storage`) is the same run in another output of the same folder name."""
    return setting_and_flag("run_name") if config.storage_path else OTHER_RUN


def has_checkpoints(fs, run_dir: str) -> bool:
    """Whether a run's folder holds checkpoints that a run of its name resumes from (`claim_run`): those Ray Train
    recorded (`RECORD`), as `resumed_step` reads them. A checkpoint's folder it never recorded (written as Ctrl-C
    stopped the run) is resumed from by no run, which a changed setting was refused for."""
    entries = fs.get_file_info(pafs.FileSelector(run_dir, allow_not_found=True))
    names = {os.path.basename(e.path) for e in entries}
    return RECORD in names and any(name.startswith("checkpoint_") for name in names)


def as_a_new_run(config: TrainConfig, shown: str) -> str:
    """What a hint to change settings of the run's record (`RUN_SETTINGS`) adds where the run has checkpoints in
    `shown`: the same command with other settings is refused (`claim_run`), so they make another run."""
    return (f"; with other settings it is a new run: give another {other_run(config)}, as {shown} holds checkpoints "
            "that a run of the same name resumes from with the same settings only")


def new_run_hint(config: TrainConfig, fs, run_dir: str, shown: str) -> str:
    """`as_a_new_run` where the run's folder holds checkpoints (or a store that does not answer leaves it unknown),
    else ''."""
    try:
        checkpointed = has_checkpoints(fs, run_dir)
    except OSError:
        checkpointed = True
    return as_a_new_run(config, shown) if checkpointed else ""


def claim_run(config: TrainConfig, model: str, fs, storage_path: str, name: str, shown: str,
              train_files: Optional[Dict[str, str]] = None) -> bool:
    """Records the settings of the run whose checkpoints go to <storage>/<name>, and refuses a run of other
    settings where there are checkpoints: Ray Train resumes a run of the same name from its last one, and
    another model's, data's or schedule's checkpoint would be loaded into this run (a model's weights partly,
    silently) or fail it mid-way. True when the run resumes from a checkpoint. `train_files`: the run's
    `training_files`, where they were looked up already."""
    settings = {key: getattr(config, key) for key in RUN_SETTINGS + EVAL_SETTINGS + CODE_SETTINGS} | {"model": model}
    settings |= {data: absolute(settings[data]) for data in DATA_SETTINGS if settings[data]}
    settings["deepspeed"] = settings["deepspeed"] and dataclasses.asdict(settings["deepspeed"])
    run_dir = f"{storage_path}/{name}"
    resumes = has_checkpoints(fs, run_dir)
    try:
        with fs.open_input_stream(f"{run_dir}/{RUN_FILE}") as f:
            earlier = json.loads(f.read())
    except FileNotFoundError:
        earlier = {}  # a new run, or checkpoints written before runs recorded their settings
    # The same objects spelled otherwise (`s3a://`, a trailing `/`), as an earlier ce-ray recorded them: the same data.
    earlier |= {data: absolute(earlier[data]) for data in DATA_SETTINGS if earlier.get(data)}
    if not config.eval_data:  # it measures nothing, and labels no figure: what its checkpoints were measured on stays
        settings |= {key: earlier[key] for key in EVAL_SETTINGS if key in earlier}
    if PRECISION in earlier:  # kept, for `claim_precision` to compare once the run knows whether it has GPUs
        settings[PRECISION] = earlier[PRECISION]
    changed = sorted(key for key in (set(settings) | set(earlier)) - {TRAIN_FILES, TRAIN_DIGESTS}
                     if settings.get(key) != earlier.get(key)
                     and (key not in EVAL_SETTINGS + CODE_SETTINGS or key in earlier))
    if resumes and earlier and changed:
        raise ConfigError(f"{shown} holds the checkpoints of a run with other settings ({', '.join(changed)}), "
                          f"which a run of the same name resumes from: give another {other_run(config)}, or delete "
                          f"{shown} to start afresh")
    settings[TRAIN_FILES] = training_files(config) if train_files is None else train_files
    settings[TRAIN_DIGESTS] = train_digests(config, settings[TRAIN_FILES], earlier)
    # A record of an earlier ce-ray has no files: its run resumes as it did, and its record gets them.
    files_changed, touched = changed_files(earlier, settings) if TRAIN_FILES in earlier else ([], [])
    if resumes and files_changed:
        raise ConfigError(f"{shown} holds the checkpoints of a run whose training data changed since "
                          f"({briefly(files_changed, 3)}): a run of the same name resumes from them and would skip the "
                          f"batches they trained by their place in other rows; give another {other_run(config)}, or "
                          f"delete {shown} to start afresh")
    if resumes and touched:
        print(f"ce-ray train: {briefly(touched, 3)}: another modification time than the run's record holds, the same "
              "bytes (sha256): the same training data as its checkpoints'", flush=True)
    if settings != earlier:
        # a run that stopped before its first checkpoint leaves nothing to resume: its settings go
        fs.create_dir(run_dir, recursive=True)
        _write_record(fs, f"{run_dir}/{RUN_FILE}", settings)
    return resumes


def _write_record(fs, path: str, record: dict) -> None:
    """The run's record, whole or not at all: written in place, a disk that filled left it empty, and every later
    run of the same name failed reading it."""
    write_bytes_atomic(fs, path, json.dumps(record, indent=2).encode(), remote=isinstance(fs, pafs.PyFileSystem))


def claim_precision(config: TrainConfig, fs, storage_path: str, name: str, shown: str, bf16: bool,
                    resumes: bool) -> None:
    """Records in the run's record (`claim_run`'s) whether its passes train in bf16 (`PRECISION`), and refuses a run
    that `resumes` from checkpoints trained in the other precision."""
    path = f"{storage_path}/{name}/{RUN_FILE}"
    with fs.open_input_stream(path) as f:
        record = json.loads(f.read())
    if resumes and record.get(PRECISION, bf16) != bf16:
        passes = {True: "bf16", False: "float32"}
        raise ConfigError(f"{shown} holds the checkpoints of a run with other settings (bf16: its passes trained in "
                          f"{passes[record[PRECISION]]}, this run's in {passes[bf16]}), which a run of the same name "
                          f"resumes from: give another {other_run(config)}, or delete {shown} to start afresh")
    if record.get(PRECISION) != bf16:
        _write_record(fs, path, record | {PRECISION: bf16})


# Ray Train's record of a run's checkpoints, in the run's folder, written as it records each: the latest one it
# records is what a run of the same name resumes from. Without it a run starts over, whatever checkpoint folders
# are there (written after a Ctrl-C's abort, or not taken whole by a store: none recorded).
RECORD = "checkpoint_manager_snapshot.json"
NOT_KNOWN = -1  # `resumed_step`: a checkpoint recorded without a step
# Ray Train's reader of the record, which logs a page at INFO as it reads one: that the snapshot is loaded, and to
# configure a new `RunConfig(name)` for a new run (no setting of ce-ray's; `run_name` is). It stood above the line
# that ends a stopped or failed run (`cli.training_finish`), which promises one line.
RECORD_LOGGER = "ray.train.v2._internal.execution.checkpoint.checkpoint_manager"


def resumed_step(config: TrainConfig) -> Optional[int]:
    """The step of the checkpoint that the same run resumes from: the latest that Ray Train recorded, read as Ray
    Train reads it (`Result.from_path`); None where it recorded none (the same command starts the run over). Raises
    OSError where the run's storage does not answer, and ConfigError where its record does not read: Ray Train
    writes it in place, and a disk that filled as it did left it empty, which failed every later try of the run, the
    failures saying that the same command resumes it."""
    import ray.train
    from ray.train.v2._internal.exceptions import CheckpointManagerInitializationError

    fs, storage_path, name, run_folder = run_storage(config)
    if fs.get_file_info(f"{storage_path}/{name}/{RECORD}").type == pafs.FileType.NotFound:
        return None
    logger = logging.getLogger(RECORD_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        result = ray.train.Result.from_path(f"{storage_path}/{name}", storage_filesystem=fs)
    except CheckpointManagerInitializationError as e:
        record = join(run_folder, RECORD)
        with fs.open_input_stream(f"{storage_path}/{name}/{RECORD}") as f:
            cut_short = not is_json(f.read())
        if cut_short:
            raise ConfigError(f"Ray Train's record of the run's checkpoints, {record}, does not read ({e}): it was "
                              "cut short as it was written (a disk that filled). The run cannot resume from it: "
                              "delete it to start the run over") from None
        # Another Ray version's record, or one naming a checkpoint folder since deleted: Ray Train's own words
        raise ConfigError(f"Ray Train cannot resume the run from its record of checkpoints, {record}: {e}") from None
    finally:
        logger.setLevel(level)
    if result.checkpoint is None:
        return None
    return (result.metrics or {}).get("step", NOT_KNOWN)


# From this many bytes of training files to read for their digests (~1 s a GiB and core), the run says so first.
SAY_DIGESTS_BYTES = 1 << 30


def train_digests(config: TrainConfig, files: Dict[str, str], earlier: dict) -> Dict[str, str]:
    """The sha256 of each local training file of `files` (`training_files`), none of files on S3. A file at the stamp
    that the `earlier` record holds keeps the digest recorded with it: a resume of files left as they were reads
    none of them, a new run reads each once."""
    if is_remote(config.train_data):
        return {}
    known, stamps = earlier.get(TRAIN_DIGESTS) or {}, earlier.get(TRAIN_FILES) or {}
    unknown = [path for path in files if path not in known or stamps.get(path) != files[path]]
    size = sum(os.path.getsize(path) for path in unknown)
    if size >= SAY_DIGESTS_BYTES:  # a pause before the training's first line, which would otherwise be unexplained
        print(f"ce-ray train: reads the sha256 of {plural(len(unknown), 'training file')} ({size / 2**30:,.1f} GiB) "
              "for the run's record, by which a resume tells a file only touched or copied again", flush=True)
    read = dict(zip(unknown, in_parallel(content_digest, unknown)))
    return {path: read[path] if path in read else known[path] for path in files}


def changed_files(earlier: dict, now: dict) -> Tuple[List[str], List[str]]:
    """`<path> rewritten` (another stamp, and another digest where both records hold one), `added` or `removed`,
    of the training files of two records (`claim_run`'s); and the files only touched or copied again (another stamp,
    the same digest)."""
    before, after = earlier[TRAIN_FILES], now[TRAIN_FILES]
    digests_before, digests_after = earlier.get(TRAIN_DIGESTS) or {}, now.get(TRAIN_DIGESTS) or {}
    restamped = [path for path in sorted(set(before) & set(after)) if before[path] != after[path]]
    touched = [path for path in restamped
               if path in digests_before and digests_before[path] == digests_after.get(path)]
    return ([f"{path} rewritten" for path in restamped if path not in touched]
            + [f"{path} added" for path in sorted(set(after) - set(before))]
            + [f"{path} removed" for path in sorted(set(before) - set(after))]), touched
