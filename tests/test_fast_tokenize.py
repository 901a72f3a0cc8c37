"""The nanotoken pair encoding equals the Hugging Face one, ids and token types, on real and hostile text."""

from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import L12, SCIFACT, wikiqa_pairs

from ce_ray import batching, fast_tokenize
from ce_ray.batching import encode_pairs_hf

EDGE_TEXTS = [
    "",
    " ",
    "   \t\n  ",
    "\u00a0\u2003\u3000",  # no-break, em and ideographic spaces
    "\u200b\u200c\u200d\ufeff",  # zero-width characters only
    "zero\u200bwidth\u2060joiner",
    "tab\there\x0bvertical\x0cform feed\r\nnew line",
    "null\x00byte and \x01\x07\x1b\x7f controls",
    "Café naïve résumé façade Ångström",
    "e\u0301 combining a\u0308 marks o\u0302\u0323",
    "ΟΔΥΣΣΕΥΣ σοφός İstanbul ıi Straße ﬁne ﬂow Ⅻ ½ ²",
    "日本語のテキストと中文混合 한국어 テスト",
    "emoji 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ done",
    "مرحبا بالعالم नमस्ते दुनिया สวัสดีชาวโลก",
    "[CLS] special [SEP] tokens [MASK] inside [UNK] [PAD] text",
    "[sep] lower [Sep] mixed [SEP][SEP]",
    "a" * 150 + " overlong word then " + "b" * 99 + " short",
    "punctuation!!!...???,,,;;;:::--__((()))[[]]{{}}'\"`~@#$%^&*",
    "numbers 3.14159 1,000,000 -42 1e-9 0x1F 2024-01-01",
    "http://example.com/path?q=1&b=2#frag user@example.org",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
]
LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog, naïvely."] * 1900)[:100_000]


@pytest.fixture(scope="module")
def tokenizer():
    from ce_ray.model_folder import load_tokenizer

    return load_tokenizer(str(L12))


def assert_same(tokenizer, queries, documents, max_length):
    expected_ids, expected_types = encode_pairs_hf(tokenizer, queries, documents, max_length)
    ids, types = fast_tokenize.encode_pairs(tokenizer, queries, documents, max_length)
    assert ids.type == pa.list_(pa.int32()) and types.type == pa.list_(pa.int8())
    assert len(ids) == len(queries)
    if not ids.equals(expected_ids) or not types.equals(expected_types):
        for row, (a, b, c, d) in enumerate(zip(ids.to_pylist(), expected_ids.to_pylist(),
                                               types.to_pylist(), expected_types.to_pylist())):
            assert (a, c) == (b, d), f"row {row} max_length {max_length}: {queries[row]!r} / {documents[row]!r}"
        pytest.fail("arrays differ")


def random_texts(count: int, seed: int = 0, lengths=(0, 1, 5, 30, 200)):
    """Seeded random text mixing ASCII words, Latin accents, CJK, emoji, spaces and control characters."""
    rng = random.Random(seed)
    pools = ["abcdefghij KLMNOP,.!?'-", "àéîõüçñßæøÅÉ", "中文字日本語한국", "😀🏽‍👍", " \t\n\u00a0\u200b",
             "\x00\x01\x0b\x0c\x7f\u0301"]
    texts = []
    for _ in range(count):
        length = rng.choice(lengths)
        texts.append("".join(rng.choice(rng.choice(pools)) for _ in range(length)))
    return texts


@pytest.mark.parametrize("max_length", [8, 32, 128, 512])
def test_wikiqa_test_pairs(tokenizer, max_length):
    pairs = wikiqa_pairs("test")
    assert len(pairs) == 6165
    assert_same(tokenizer, pairs["query"].tolist(), pairs["document"].tolist(), max_length)


def scifact_pairs():
    """Every (claim, abstract) pair of the SciFact test qrels, plus each claim with the next one's abstract."""
    corpus = {}
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            corpus[doc["_id"]] = f"{doc['title']} {doc['text']}"
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as f:
        claims = {q["_id"]: q["text"] for q in map(json.loads, f)}
    qrels = [line.split("\t")[:2] for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    queries = [claims[q] for q, _ in qrels]
    documents = [corpus[d] for _, d in qrels]
    return queries + queries, documents + documents[1:] + documents[:1]


@pytest.mark.parametrize("max_length", [32, 128, 256, 512])
def test_scifact_pairs(tokenizer, max_length):
    queries, documents = scifact_pairs()
    assert len(queries) == 678
    if max_length == 512:  # some abstracts do not fit: truncation at the model's limit is exercised
        lengths = fast_tokenize.encode_pairs(tokenizer, queries, documents, 10**6)[0].value_lengths().to_numpy()
        assert (lengths > 512).sum() > 5
    assert_same(tokenizer, queries, documents, max_length)


@pytest.mark.parametrize("max_length", [0, 2, 3, 4, 8, 9, 32, 512])
def test_edge_cases(tokenizer, max_length):
    # Hugging Face keeps every overflow piece of a truncated pair and crosses both sides' pieces: at
    # max_length 4..9 a 100k-character text costs it seconds, and long against long gigabytes.
    short_room = 3 <= max_length < 32
    long_text = LONG_TEXT[:5000] if short_room else LONG_TEXT
    texts = EDGE_TEXTS + random_texts(20, lengths=(0, 1, 5, 30) if short_room else (0, 1, 5, 30, 200))
    queries = [q for q in texts for _ in texts] + [long_text, "short query", ""]
    documents = [d for _ in texts for d in texts] + ["short document", long_text, long_text]
    if not short_room:
        queries, documents = queries + [LONG_TEXT[:5000]], documents + [LONG_TEXT[:6000]]
    assert_same(tokenizer, queries, documents, max_length)


@pytest.mark.parametrize("max_length", [32, 35, 128, 512])
def test_a_long_text_is_encoded_by_its_first_words_to_the_same_ids(tokenizer, max_length):
    """A text of more characters than `PREFIX_CHARS_PER_TOKEN` a token of the room is encoded by its words up to a
    space there: the same ids, whether the pair's other side is short, over the room too (longer or shorter: it
    is then encoded whole), or of words too long for the vocabulary before the cut (one [UNK] each: too few tokens,
    encoded whole); CJK without spaces is not cut. Whole, a 250 KB page took seconds and GBs a block."""
    _, abstracts = scifact_pairs()
    limit = fast_tokenize.PREFIX_CHARS_PER_TOKEN * (max_length - 2)
    # Twice the limit: Hugging Face crosses both sides' overflow pieces, gigabytes for long against long.
    joined = " ".join(abstracts[:12])[: 2 * limit]
    spaced_at_the_limit = "word " * (limit // 5) + "tail " * 40
    long_texts = [joined, joined[: len(joined) // 2], joined[::-1], ("x" * 150 + " ") * (limit // 150) + joined,
                  "日本語のテキスト" * (limit // 4), "naïve Café, ÅNGSTRÖM résumé! " * (limit // 15), spaced_at_the_limit,
                  spaced_at_the_limit[:-1], joined.replace(" ", "\t"),
                  # too few tokens before the cut (a page indented by spaces): encoded whole, and over the room, beside
                  # a long side cut in the first round, which is then encoded whole in a second (whole, the indented
                  # page is longer than the other side's first words, shorter than all of them)
                  "Menu" + " " * limit + joined[: limit * 3 // 2], "Menu" + " " * limit + joined[: limit * 5 // 4]]
    short_texts = ["", "a short query", abstracts[12][:max_length * 3], abstracts[13]]
    texts = long_texts + short_texts
    queries = [q for q in texts for _ in texts]
    documents = [d for _ in texts for d in texts]
    assert_same(tokenizer, queries, documents, max_length)
    for indented in long_texts[-2:]:  # alone with a long side: in a batch, other pairs had it encoded whole
        assert_same(tokenizer, [joined, indented], [indented, joined], max_length)

    plan = fast_tokenize.pair_plan(tokenizer)
    assert plan.prefixes_hold
    whole = fast_tokenize.encode_pairs(tokenizer, [""], [joined], 10**6)[0].value_lengths()[0].as_py() - 3
    assert whole > 3 * max_length
    _, _, lengths = fast_tokenize._encoded_texts(plan, [pa.array(["a query"]), pa.array([joined])], np.array([0]),
                                                 np.array([1]), max_length, False)
    assert max_length - 3 < lengths[1] < whole * 2 / 3  # its first words, more tokens than the pair keeps


def test_a_tokenizer_whose_added_token_holds_a_space_encodes_long_texts_whole():
    """An added token that holds a space would be split by a cut before the space: such a tokenizer's texts are
    encoded whole, whatever their length."""
    from tokenizers import normalizers

    tok = wordpiece_variant(normalizers.BertNormalizer())
    tok.add_tokens(["new york"])
    plan = fast_tokenize.pair_plan(tok)
    assert plan is not None and not plan.prefixes_hold
    long_text = "in new york " * 40 + "new york"
    assert_same(tok, ["new york", long_text], [long_text, "york new"], 16)
    del plan


def test_longest_first_on_every_length_pair(tokenizer):
    """All (query, document) token counts 0..14 under every small max_length: HF's split, tie included."""
    counts = [(nq, nd) for nq in range(15) for nd in range(15)]
    queries = [" ".join(["a"] * nq) for nq, _ in counts]
    documents = [" ".join(["b"] * nd) for _, nd in counts]
    for max_length in range(0, 33):
        assert_same(tokenizer, queries, documents, max_length)


def test_random_unicode(tokenizer):
    texts = random_texts(300, seed=1, lengths=(0, 5, 30, 200, 1500, 5000))
    assert_same(tokenizer, texts[:150], texts[150:], 128)


def test_arrow_input_and_repeated_queries(tokenizer):
    """Arrow string arrays are taken as they are; a query repeated over many documents is encoded once."""
    pairs = wikiqa_pairs("test", n=400)
    queries = pa.array(np.repeat(pairs["query"].to_numpy()[:4], 100).tolist())
    documents = pa.chunked_array([pairs["document"].tolist()[:200], pairs["document"].tolist()[200:]])
    ids, types = fast_tokenize.encode_pairs(tokenizer, queries, documents, 64)
    expected_ids, expected_types = encode_pairs_hf(tokenizer, queries.to_pylist(), documents.to_pylist(), 64)
    assert ids.equals(expected_ids) and types.equals(expected_types)


def test_empty_batch_and_bad_input(tokenizer):
    ids, types = fast_tokenize.encode_pairs(tokenizer, [], [], 128)
    assert len(ids) == 0 and ids.type == pa.list_(pa.int32()) and types.type == pa.list_(pa.int8())
    with pytest.raises(ValueError, match="queries but"):
        fast_tokenize.encode_pairs(tokenizer, ["q"], [], 128)
    with pytest.raises(ValueError, match="null"):
        fast_tokenize.encode_pairs(tokenizer, ["q", None], ["d", "e"], 128)


def test_model_without_token_types(tokenizer):
    from ce_ray.model_folder import load_tokenizer

    no_types = load_tokenizer(str(L12))
    no_types.model_input_names = ["input_ids", "attention_mask"]
    expected_ids, expected_types = encode_pairs_hf(no_types, ["a query"], ["a document"], 16)
    ids, types = fast_tokenize.encode_pairs(no_types, ["a query"], ["a document"], 16)
    assert expected_types is None and types is None and ids.equals(expected_ids)


def test_a_tokenizer_changed_between_calls_gets_its_own_ids():
    """The plan of a tokenizer was kept by its size alone: after `add_tokens` of words already in the vocabulary
    (its size the same) or a normalizer replaced, the ids were the former tokenizer's, not Hugging Face's."""
    from tokenizers import normalizers

    from ce_ray.model_folder import load_tokenizer

    changed = load_tokenizer(str(L12))
    queries, documents = ["q", "Café"], ["foobar snowboarding", "Crème brûlée"]
    assert_same(changed, queries, documents, 64)
    size = len(changed)
    changed.add_tokens(["foo", "snow"])
    assert len(changed) == size
    assert_same(changed, queries, documents, 64)
    changed.backend_tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
    assert_same(changed, queries, documents, 64)


def wordpiece_variant(normalizer, post_processor=None):
    """A BERT WordPiece tokenizer on the shared vocab with another normalizer or pair template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = (L12 / "vocab.txt").read_text(encoding="utf-8").splitlines()
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = post_processor or processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 101), ("[SEP]", 102)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


@pytest.mark.parametrize("lowercase, strip_accents", [(False, None), (True, False), (False, True)])
def test_other_bert_normalizer_settings(lowercase, strip_accents):
    from tokenizers import normalizers, processors

    for post in (None, processors.BertProcessing(("[SEP]", 102), ("[CLS]", 101))):
        tok = wordpiece_variant(normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents), post)
        assert fast_tokenize.supports(tok)
        texts = EDGE_TEXTS + random_texts(10, seed=2)
        assert_same(tok, [q for q in texts for _ in texts], [d for _ in texts for d in texts], 24)


def unsupported_tokenizers():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE({"[UNK]": 0, "a": 1, "b": 2, "ab": 3}, [("a", "b")], unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    unigram = Tokenizer(models.Unigram([("[UNK]", 0.0), ("a", -1.0), ("b", -2.0)], unk_id=0))
    not_bert_normalizer = wordpiece_variant(normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()]))
    roberta_pairs = wordpiece_variant(
        normalizers.BertNormalizer(), processors.RobertaProcessing(("[SEP]", 102), ("[CLS]", 101))
    )
    left = wordpiece_variant(normalizers.BertNormalizer())
    left.truncation_side = "left"
    left.init_kwargs["truncation_side"] = "left"  # kept by save_pretrained
    return {
        "bpe": PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]"),
        "unigram": PreTrainedTokenizerFast(tokenizer_object=unigram, unk_token="[UNK]"),
        "nfd+lowercase": not_bert_normalizer,
        "roberta pair template": roberta_pairs,
        "left truncation": left,
    }


def test_unsupported_tokenizers_fall_back_to_hugging_face(tokenizer, tmp_path):
    assert fast_tokenize.supports(tokenizer)
    assert batching.fast_plan(tokenizer, "auto") and batching.fast_plan(tokenizer, "hf") is None
    for name, tok in unsupported_tokenizers().items():
        assert not fast_tokenize.supports(tok), name
        assert batching.fast_plan(tok, "auto") is None, name
        # named by the setting and flag, not as no BERT WordPiece (a BertTokenizer that cuts on the left was)
        with pytest.raises(ValueError, match=r"^tokenizer fast \(--tokenizer fast\): nanotoken does not reproduce "
                                             r"this \w+ .*: give tokenizer hf \(--tokenizer hf\), or auto"):
            batching.fast_plan(tok, "fast")
        with pytest.raises(ValueError, match="not a supported"):
            fast_tokenize.encode_pairs(tok, ["a b"], ["b a"], 8)
        # As a job runs it: the driver decides, a worker loads the tokenizer from the model's folder.
        tok.save_pretrained(tmp_path / name)
        encoder = pickle.loads(pickle.dumps(batching.pair_encoder(str(tmp_path / name), "auto")))
        assert encoder.fast is None, name
        texts = pa.array(["a b", "ab"]), pa.array(["b a", ""])
        ids, types = encoder.encode(*texts, 8)
        expected_ids, expected_types = encode_pairs_hf(tok, ["a b", "ab"], ["b a", ""], 8)
        assert ids.equals(expected_ids) and len(ids) == 2
        assert (types is None and expected_types is None) or types.equals(expected_types)


def test_tokenize_table_auto_equals_hf(tokenizer):
    """The pipeline's tokenize stage picks nanotoken on its own and gives the Hugging Face columns."""
    pairs = wikiqa_pairs("test", n=300)
    table = pa.table({"query": pairs["query"].tolist()[:-1] + [None], "document": pairs["document"].tolist()})
    auto, hf = batching.pair_encoder(str(L12), "auto"), batching.pair_encoder(str(L12), "hf")
    assert auto.fast is not None and batching.pair_encoder(str(L12), "fast") == auto and hf.fast is None
    fast = batching.tokenize_table(table, auto, "query", "document", 64)
    assert fast.equals(batching.tokenize_table(table, hf, "query", "document", 64))
    assert fast.column(batching.IDS).null_count == 1


def test_a_tokenize_task_imports_neither_transformers_nor_torch():
    """A tokenize worker, in a fresh process: it unpickles the driver's encoder and runs the job's tokenize
    function. With nanotoken it needs no Hugging Face tokenizer, so neither transformers nor torch loads
    (together ~2 s and ~200 MB in every worker process of a node)."""
    pairs = wikiqa_pairs("test", n=200)
    table = pa.table({"query": pairs["query"].tolist(), "document": pairs["document"].tolist()})
    encoder = batching.pair_encoder(str(L12))
    expected = batching.tokenize_table(table, batching.pair_encoder(str(L12), "hf"), "query", "document", 128)
    job = {"encoder": encoder, "table": table}
    code = (
        "import pickle, sys\n"
        "from ce_ray.score import _tokenize_block\n"
        "job = pickle.load(sys.stdin.buffer)\n"
        "out = _tokenize_block(job['table'], job['encoder'], 'query', 'document', 128, 'fail', {})\n"
        "loaded = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "pickle.dump((out, loaded), sys.stdout.buffer)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(job), capture_output=True, timeout=120,
                         cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr.decode()
    out, loaded = pickle.loads(run.stdout)
    assert loaded == [] and out.equals(expected)


def test_a_tokenizer_saved_again_is_the_one_used(tmp_path):
    """A process's tokenizers are cached (a Ray task worker outlives a job in a Python session): a folder whose
    tokenizer was saved again since (a model trained again into it) is tokenized by the new one. The first was
    used, without a word, and the scores were another tokenizer's ids through the new model."""
    from conftest import build_tiny_model

    model = build_tiny_model(tmp_path / "model", layers=1)
    texts = pa.array(["hello"]), pa.array(["world"])
    before, _ = batching.pair_encoder(str(model), "hf").encode(*texts, 16)
    saved = json.loads((model / "tokenizer.json").read_text())
    vocab = saved["model"]["vocab"]
    vocab["hello"], vocab["world"] = vocab["world"], vocab["hello"]
    (model / "tokenizer.json").write_text(json.dumps(saved))
    after, _ = batching.pair_encoder(str(model), "hf").encode(*texts, 16)
    hello, world = before.to_pylist()[0][1], before.to_pylist()[0][3]
    assert after.to_pylist()[0][1:4:2] == [world, hello]
