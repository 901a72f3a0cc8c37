"""A scoring replica: one model on one device, scoring the tokenized blocks Ray Data hands it.

`score.score` runs this class in an actor pool; only the replica's process imports this module, and with it
torch (and transformers, for a model that ce-ray's BERT does not reproduce).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable, Iterator, Optional, Tuple

# A replica's process imports this module as it starts, and torch is most of its start on a GPU machine:
# the ready line reports how long the imports took.
_imports_started = time.perf_counter()
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from .batching import IDS, REJECT, TYPES, default_batch_tokens, list_parts, token_budget_batches  # noqa: E402
from .bert import BertCrossEncoder  # noqa: E402
from .config import ScoreConfig  # noqa: E402
from .messages import plural, setting_and_flag  # noqa: E402
from .model import ModelError, attention_inputs, load_scoring_model, to_device  # noqa: E402
from .model_folder import local_model_path  # noqa: E402
from .runtime import usable_cpus  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _imports_started


class Scorer:
    """One model replica. Each call scores a block: length-sorted token-budget micro-batches, input order
    restored at the end.

    The block's tokens go to the device once, as they travel (int32 ids, int8 token types), and each batch
    is padded there by a few tensor ops: a call only queues work, so on a GPU the next batch is ready while
    the current one runs, and the scores come back in one copy per block. On a GPU two calls run at once, in
    two threads (`score.replica_pool`): a call keeps all its state in its own frame.
    """

    def __init__(self, config: ScoreConfig, device: str, replicas_per_node: int = 1, files: Optional[dict] = None):
        marks = [("start", time.perf_counter())]  # (what ended, when) for the ready line
        threads = ""
        if device == "cpu":
            # The model is the bottleneck here: it runs on the cores of its node (its share of them, where several
            # replicas share a node), not on the one CPU the actor holds (Ray sets OMP_NUM_THREADS to it). Its
            # node's: a pod's CPU limit, or a Ray node's CPUs, not all the cores of the machine under them.
            torch.set_num_threads(max(usable_cpus() // replicas_per_node, 1))
            threads = f" ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"
        else:  # CUDA's start, apart from the model's load
            torch.zeros(1, device=device)
            marks.append(("CUDA", time.perf_counter()))
        # An s3:// model's objects as the job's driver listed them (`files`): every replica loads those weights.
        model = local_model_path(config.model, files) if files else config.model
        self.reranker = load_scoring_model(
            model, device=device, dtype=config.dtype, allow_pickle=config.allow_pickle,
            trust_remote_code=config.trust_remote_code, implementation=config.implementation,
        )
        if config.activation:  # the user's, instead of the model's own
            self.reranker = dataclasses.replace(self.reranker, activation=config.activation)
        self.budget = config.batch_tokens or default_batch_tokens(self.reranker.device.type == "cuda")
        self.score_column = config.score_column
        self.pad_id = self.reranker.pad_id
        self.model_type = self.reranker.model_type
        self.forward = self.reranker.model
        marks.append(("model", time.perf_counter()))
        if config.compile:
            # dynamic=True: one graph for every (rows, width), not one per batch shape.
            self.forward = torch.compile(self.reranker.model, dynamic=True)
            self._compile_graphs()
            marks.append(("compiling", time.perf_counter()))
        # One line per replica (Ray shows it with the worker's name): which forward pass runs, and where its
        # start went. On stderr: Ray gives a worker's stdout to the driver's, where a caller of `predict` writes its
        # own output (`> scores.json`).
        code = "ce-ray's BERT" if isinstance(self.reranker.model, BertCrossEncoder) else "transformers"
        dtype = str(self.reranker.dtype).removeprefix("torch.")
        took = ", ".join(f"{what} {end - begin:.1f} s" for (_, begin), (what, end) in zip(marks, marks[1:]))
        print(f"ce-ray replica: {config.model} on {self.reranker.device}{threads} in {dtype} "
              f"({code}{', compiled' if config.compile else ''}), ready in {marks[-1][1] - marks[0][1]:.1f} s "
              f"({took}; imports before that {IMPORT_SECONDS:.1f} s)", file=sys.stderr, flush=True)

    def _compile_graphs(self) -> None:
        """Compiles every graph that calls will meet, before the first call, so that the compiling overlaps
        the job's first reads and tokenizing and no call waits for it: a batch with padding (it has a mask),
        one without (no mask), and one of a single row (torch specializes sizes of 1)."""
        with_types = "token_type_ids" in self.reranker.input_names
        with torch.inference_mode():  # as in a call: graphs are kept per grad mode and tensor kind
            for lengths in ([13, 11, 9], [11, 11, 11], [11]):
                lengths = np.array(lengths, np.int64)
                total = int(lengths.sum())
                starts, row_lengths = self._to_device(np.stack([np.cumsum(lengths) - lengths, lengths]))
                flat_ids = self._to_device(np.full(total, self.pad_id, np.int32))
                flat_types = self._to_device(np.zeros(total, np.int8)) if with_types else None
                self.forward(**self._padded_inputs(flat_ids, flat_types, starts, row_lengths, int(lengths[0]),
                                                   padded=bool(lengths[-1] < lengths[0])))

    def _to_device(self, array: np.ndarray):
        return to_device(array, self.reranker.device)

    def _padded_inputs(self, flat_ids, flat_types, starts, lengths, width: int, padded: bool = True) -> dict:
        """A batch's model inputs, padded on the device from the block's flat tokens: row i holds
        flat[starts[i] : starts[i] + lengths[i]], then padding (the same arrays as `batching.pad`).
        A batch whose rows all have `width` tokens (`padded` False) gets no attention mask (`attention_inputs`)."""
        position = torch.arange(width, device=flat_ids.device)
        mask = position < lengths[:, None]
        source = torch.where(mask, starts[:, None] + position, 0)
        inputs = {"input_ids": flat_ids[source].masked_fill_(~mask, self.pad_id).long(),
                  **attention_inputs(self.model_type, mask, padded)}
        if flat_types is not None:
            inputs["token_type_ids"] = flat_types[source].masked_fill_(~mask, 0).long()
        return inputs

    def device_batches(self, table: pa.Table) -> Iterator[Tuple[np.ndarray, dict]]:
        """(rows, model inputs on the device) of each token-budget batch of the block's valid rows."""
        ids, offsets = list_parts(table.column(IDS))
        lengths = np.diff(offsets)
        rows = np.flatnonzero(table.column(REJECT).is_null().to_numpy(zero_copy_only=False))
        batches = list(token_budget_batches(lengths[rows], self.budget))
        if not batches:
            return
        order = rows[np.concatenate(batches)]  # every valid row, batch after batch
        flat_ids = self._to_device(ids)
        flat_types = self._to_device(list_parts(table.column(TYPES))[0]) if TYPES in table.column_names else None
        sorted_lengths = lengths[order]
        starts, row_lengths = self._to_device(np.stack([offsets[order], sorted_lengths]).astype(np.int64))
        first = 0
        for batch in batches:
            last = first + len(batch)
            # Longest first: a batch's width is its first row's length and it is padded if its last row is
            # shorter, both known here without a sync.
            width = max(int(sorted_lengths[first]), 1)
            yield order[first:last], self._padded_inputs(flat_ids, flat_types, starts[first:last],
                                                         row_lengths[first:last], width,
                                                         padded=bool(sorted_lengths[last - 1] < width))
            first = last

    def __call__(self, table: pa.Table, batch_done: Optional[Callable[[int], None]] = None) -> pa.Table:
        """`batch_done(rows)` after each batch's forward pass, where that pass ends as it returns (on a CPU)."""
        valid = table.column(REJECT).is_null().to_numpy(zero_copy_only=False)
        scores = np.full(table.num_rows, np.nan, dtype=np.float32)
        order, results = [], []
        with torch.inference_mode():
            try:
                for rows, inputs in self.device_batches(table):
                    results.append(self.reranker.scores(self.reranker.logits(self.forward(**inputs))))
                    order.append(rows)
                    if batch_done is not None:
                        batch_done(len(rows))
            except torch.OutOfMemoryError as e:  # one line, with the setting to change, for the command line
                raise ModelError(
                    f"{self.reranker.path} ran out of GPU memory scoring batches of up to {self.budget:,} padded "
                    f"tokens, {plural(table.num_rows, 'row')} a call ({str(e).splitlines()[0]}): set a smaller "
                    f"{setting_and_flag('batch_tokens')}, or {setting_and_flag('rows_per_call')}") from None
        if results:  # one copy back per block: reading each batch's scores would wait for the GPU every batch
            scores[np.concatenate(order)] = torch.cat(results).cpu().numpy()
        bad = int((~np.isfinite(scores[valid])).sum())
        if bad:  # never written as scores: a half-precision overflow, or a broken model
            dtype = str(self.reranker.dtype).removeprefix("torch.")
            message = f"{self.reranker.path} gave {bad} non-finite score(s) in {dtype}"
            if self.reranker.dtype == torch.float16:
                # The way to finish too: a resume in another dtype is refused over files scored in this one. The
                # settings by their names in Python and on the command line, as the caller may use either.
                message += (": float16's range overflowed; score with dtype bfloat16 or float32 (--dtype), a job's "
                            f"output with {setting_and_flag('mode', 'overwrite')}: resuming would mix their scores "
                            "with float16's")
            raise ModelError(message)
        table = table.drop_columns([c for c in (IDS, TYPES) if c in table.column_names])
        return table.append_column(self.score_column, pa.array(scores, pa.float32(), mask=~valid))
