"""What a job's driver needs of a model's tokenizer, kept on disk so that later jobs with the same model need
neither transformers nor torch in the driver (2 s of a job on a 2-core CPU): nanotoken's plan, the
tokenizer's class, and CrossEncoder's max length. Asking them also checks the model against its tokenizer and its
weights against its config.json (`check_embeddings`, `check_weight_shapes`): a record says they passed.

transformers settles these from the folder's files (tokenizer.json, tokenizer_config.json, the special
tokens, config.json, sentence_bert_config.json) by rules that change between its versions, so ce-ray does
not reproduce them. The first job with a folder asks transformers and records its answer under a key made of
the bytes of every file of the folder but the weights (of those, their shapes; files too large for a tokenizer
are left out), the versions of transformers, tokenizers and nanotoken, and the source of the ce-ray code that
derives the answer: any change to any of them is another key, asked again. Models with repository code are not
recorded.

A job asks in a process of its own while it starts Ray (`facts_ahead`): transformers' imports, torch's among
them, are most of the cost of asking (2.0 of 2.3 s on a 2-core CPU; 16 s in all on the H200 machine), and Ray's
start takes 3-8 s.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import pickle
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from . import fast_tokenize
from .model_folder import (ModelError, cache_dir, check_embeddings, check_weight_shapes, load_tokenizer,
                           local_model_path, max_length_of, weight_shapes)

WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt", ".gguf", ".ot")
LARGEST = 64 << 20  # bytes: a larger file is no tokenizer's (XLM-R's tokenizer.json is 17 MB), left out too
LIBRARIES = ("transformers", "tokenizers", "nanotoken")


@dataclass(frozen=True)
class TokenizerFacts:
    plan: Optional[fast_tokenize.PairPlan]  # None: nanotoken cannot reproduce the tokenizer
    tokenizer_class: str
    max_length: int  # CrossEncoder's (`model_folder.max_length_of`)


def tokenizer_facts(model: str, trust_remote_code: bool = False) -> TokenizerFacts:
    """The facts of `model`'s tokenizer: from the record of an earlier job, else from transformers (then
    recorded)."""
    path, record, facts = _recorded(model, trust_remote_code)
    return facts or _asked(path, trust_remote_code, record)


def _recorded(model: str, trust_remote_code: bool) -> tuple:
    """The model's local folder, the path of its facts' record (None: they are not recorded), and the facts
    recorded there (None: none yet)."""
    path = local_model_path(model)
    record = None if trust_remote_code or not os.path.isdir(path) else _record_path(path)
    return path, record, _read(record) if record else None


def _asked(path: str, trust_remote_code: bool, record: Optional[str]) -> TokenizerFacts:
    """The facts from transformers, recorded where they are recordable."""
    facts = _from_transformers(path, trust_remote_code)
    if record:
        _write(record, facts)
    return facts


def facts_ahead(model: str, trust_remote_code: bool = False) -> Callable[[], TokenizerFacts]:
    """`tokenizer_facts`, begun now and given when the returned function is called: where no earlier job recorded
    them, another Python process asks transformers and records them while this one goes on, and this process
    imports neither transformers nor torch. Where that process gives no answer (it could not start, or died, or
    the cache cannot be written) or fails other than as a model that cannot be loaded, this process asks, so that
    the error is its own. Facts that are not recorded (repository code), and a process that has torch already (a
    notebook's, a benchmark's), are asked here: another process would import it all again, each time."""
    path, record, facts = _recorded(model, trust_remote_code)
    if facts is not None:
        return lambda: facts
    ask_here = functools.partial(_asked, path, trust_remote_code, record)  # the folder hashed once, above
    if record is None or "torch" in sys.modules or not sys.executable:  # (no executable: an embedded Python)
        return ask_here
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        asking = subprocess.Popen([sys.executable, "-c", ASK, path, package_root], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE)
    except OSError:
        return ask_here

    def answer() -> TokenizerFacts:
        said = asking.communicate()[0]
        try:
            error = pickle.loads(said) if said else None
        except Exception:  # cut short: the process died as it said its error
            error = None
        if isinstance(error, (OSError, ValueError)):  # the model's (a ModelError is a ValueError)
            raise error
        return _read(record) or ask_here()  # not recorded: asked here

    return answer


# The asking process. A Ctrl-C that stops the job ends it without a traceback of its own (the job says it stopped).
# Its sys.path ends with the folder of this ce_ray: where this process was given it otherwise (a path added at run
# time), the same ce_ray is imported.
ASK = ("import signal, sys\n"
       "if signal.getsignal(signal.SIGINT) is signal.default_int_handler:\n"
       "    signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
       "sys.path.append(sys.argv[2])\n"
       "from ce_ray.tokenizer_facts import _answer\n"
       "_answer(sys.argv[1])\n")


def _answer(path: str) -> None:
    """The asking process (`facts_ahead`): it records the facts and says nothing, or says the error, pickled, on its
    stdout (a few hundred bytes: a pipe's buffer holds them, whether or not the job still waits). What a library
    prints goes to stderr, as in the job's process."""
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        tokenizer_facts(path)
    except Exception as e:
        try:
            said = pickle.dumps(e)
        except Exception:  # an error that does not pickle: the job asks itself
            said = pickle.dumps(None)
        try:
            answer.write(said)
            answer.close()
        except OSError:  # the job ended without waiting
            pass


def _read(record: str) -> Optional[TokenizerFacts]:
    """The recorded facts; None when there are none (or they cannot be read: then they are asked again)."""
    try:
        with open(record) as f:
            saved = json.load(f)
        plan = saved["plan"] and fast_tokenize.PairPlan(**saved["plan"])
        return TokenizerFacts(plan, saved["tokenizer_class"], saved["max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _from_transformers(path: str, trust_remote_code: bool) -> TokenizerFacts:
    from huggingface_hub.errors import StrictDataclassError

    try:
        return _facts_of(path, trust_remote_code)
    except StrictDataclassError as e:  # config.json's values disagree (num_hidden_layers edited, not layer_types)
        # Not a ValueError, and its first line names the check alone: the job failed with a traceback.
        cause = re.sub(r"^\w+: ", "", str(e).strip().splitlines()[-1].strip())
        raise ModelError(f"{path}/config.json does not hold together: {cause}") from None


def _facts_of(path: str, trust_remote_code: bool) -> TokenizerFacts:
    from transformers import AutoConfig

    # Loaded afresh (not `batching.cached_tokenizer`'s, which a process keeps per path): the files may have
    # changed since, and the answer is recorded under their present bytes.
    tokenizer = load_tokenizer(path, trust_remote_code)
    # A folder of a tokenizer alone has no model config (nor positions to cap the length).
    alone = os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json"))
    config = None if alone else AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if config is not None:
        check_embeddings(path, tokenizer, config)
        check_weight_shapes(path, config)
    return TokenizerFacts(fast_tokenize.pair_plan(tokenizer), type(tokenizer).__name__,
                          max_length_of(path, tokenizer, config))


def _record_path(path: str) -> str:
    key = hashlib.sha256()
    for name in LIBRARIES:
        try:
            key.update(f"{name} {importlib.metadata.version(name)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            key.update(f"{name} none\n".encode())
    here = os.path.dirname(os.path.abspath(__file__))
    for source in ("tokenizer_facts.py", "fast_tokenize.py", "model_folder.py"):
        with open(os.path.join(here, source), "rb") as f:
            key.update(f.read())
    for name in sorted(os.listdir(path)):
        file = os.path.join(path, name)
        if os.path.isfile(file) and not name.endswith(WEIGHTS) and os.path.getsize(file) <= LARGEST:
            with open(file, "rb") as f:
                key.update(f"\n{name} {os.path.getsize(file)}\n".encode() + f.read())
    # The weights' shapes, which `check_weight_shapes` holds to config.json: read from their headers alone.
    key.update(json.dumps(sorted(weight_shapes(path).items())).encode())
    return os.path.join(cache_dir(), "tokenizers", f"{key.hexdigest()[:32]}.json")


def _write(record: str, facts: TokenizerFacts) -> None:
    """Written whole or not at all (renamed into place); a cache that cannot be written is skipped, and what it
    took of the record removed (a full disk's: two files a job, left for good)."""
    partial = f"{record}.partial-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(record), exist_ok=True)
        with open(partial, "w") as f:
            json.dump(asdict(facts), f)
        os.replace(partial, record)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(partial)
