"""An ingest killed with SIGKILL (kill -9) half way through embedding: the generation committed before it keeps
serving, and the next run finishes the job without embedding again what the killed one stored, leaving the store with
exactly the catalog's vectors.

Everything on the data dir runs as processes of its own, as in production: `xiaoyu ingest --kb laws SAMPLE
--data-dir D` (the real CLI, building the onnx embedder from the data dir's model cache), and a small probe process
that builds the services and reports what they serve. The test process never opens the data dir's embedded Chroma:
one process's cached client would not see another's later writes.

When to kill: the CLI draws a tqdm bar per phase on a terminal, updated each time a group of vectors is stored
(groups of ingest.pipeline.EMBED_GROUP). The killed run's stderr is a pseudo-terminal, and it is killed as soon as
its 嵌入片段 bar shows a group stored with more to come: between two groups of one generation's embedding, before its
commit. The sample's new laws hold many groups, so that is a moment the test can see coming."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from assistant.config import PROJECT_ROOT
from ingest.loaders import load_file, load_manifest
from ingest.pipeline import EMBED_GROUP
from ingest.splitter import ChineseSplitter
from tests.library_sample import (
    FIRST,
    SECOND,
    TOBACCO,
    TOBACCO_LAW,
    require_library,
    share_model,
    write_sample,
)

pytestmark = pytest.mark.integration  # five processes, each loading the model, ~600 chunks: a minute or two on 2 cores

SUMMARY = re.compile(r"新增 (\d+) · 更新 (\d+) · 未变 (\d+) · 删除 (\d+) · 失败 (\d+)（嵌入 (\d+) 个片段）")
BAR = re.compile(r"嵌入片段: *\d+%\|[^|]*\| *(\d+)/(\d+)")
BLOOD = "献血者两次献血的间隔不少于多久？"  # answered by 献血法, one of the SECOND laws
BLOOD_LAW = "中华人民共和国献血法"
TIMEOUT = 600.0

PROBE = """
import json, sys
from pathlib import Path
from assistant.config import Settings
from assistant.index.sentences import provision_sentences, sentence_id
from assistant.services import build_services

services = build_services(Settings(data_dir=Path(sys.argv[1])))
index = services.library.get("laws").index
catalog = index.catalog
answers = {}
for question in sys.argv[2:]:
    a = services.chat.ask(question, knowledge_bases=["laws"])
    answers[question] = {"refused": a.refused, "citations": [[c.knowledge_base, c.title, c.source] for c in a.citations]}
print(json.dumps({
    "generation": catalog.generation, "docs": sorted(catalog.docs), "chunks": sorted(catalog.chunks),
    "stored": sorted(index.store.ids()), "stored_count": index.store.count(),
    "sentences_needed": sorted({sentence_id(t) for c in catalog.chunks.values() for t in provision_sentences(c.body)}),
    "sentences": sorted(index.sentences.ids()), "sentences_count": index.sentences.count(),
    "answers": answers,
}, ensure_ascii=False))
"""


def _env() -> dict[str, str]:
    """This environment without XIAOYU_ settings, so the processes run on defaults and --data-dir alone."""
    return {k: v for k, v in os.environ.items() if not k.startswith("XIAOYU_")}


def _ingest_cmd(sample: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "assistant.cli", "ingest", "--kb", "laws", str(sample), "--data-dir", str(data_dir)]


def _ingest(sample: Path, data_dir: Path) -> tuple[int, ...]:
    """Run `xiaoyu ingest --kb laws` to the end: the counts of its summary line (added, updated, unchanged, removed,
    failed, embedded)."""
    done = subprocess.run(_ingest_cmd(sample, data_dir), cwd=PROJECT_ROOT, env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = SUMMARY.search(done.stdout)
    assert found is not None, done.stdout
    return tuple(int(g) for g in found.groups())


def _probe(data_dir: Path, *questions: str) -> dict:
    """What a freshly started process serves from the data dir."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(data_dir), *questions], cwd=PROJECT_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ingest_and_kill(sample: Path, data_dir: Path) -> tuple[int, int]:
    """Start `xiaoyu ingest` with its stderr on a pseudo-terminal (so it draws its progress bars), SIGKILL it once
    its chunk bar shows vectors stored with more to come; (stored, total) as the bar showed them then."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # room for the whole bar
    proc = subprocess.Popen(_ingest_cmd(sample, data_dir), cwd=PROJECT_ROOT, env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = bytearray()
    lock = threading.Lock()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the process is gone
                return
            if not data:
                return
            with lock:
                seen.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:  # waiting for the process to reach a state, not a timing assertion
            with lock:
                text = seen.decode("utf-8", errors="replace")
            bars = BAR.findall(text)
            if bars:
                stored, total = map(int, bars[-1])
                if stored > 0:
                    assert stored < total, f"all {total} chunks were stored before the kill: use a bigger sample"
                    proc.send_signal(signal.SIGKILL)
                    assert proc.wait(timeout=60) == -signal.SIGKILL
                    return stored, total
            if proc.poll() is not None:
                raise AssertionError(f"xiaoyu ingest exited ({proc.returncode}) before it could be killed:\n"
                                     f"{text[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no chunk progress within {TIMEOUT:.0f} s:\n{text[-2000:]}")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        reader.join(timeout=10)
        os.close(master)


def _chunk_ids(sample: Path, files) -> set[str]:
    """The ids ingest gives the chunks of `files` of `sample` (content hashes: the same in every process)."""
    manifest, splitter = load_manifest(sample), ChineseSplitter()
    return {c.id for f in files for c in splitter.split(load_file(sample / f, sample, manifest))}


def test_an_ingest_killed_while_embedding_leaves_the_last_generation_serving_and_the_rerun_embeds_only_the_rest(
        tmp_path, embedder):
    require_library()
    data_dir = tmp_path / "data"
    share_model(embedder, data_dir)
    first = write_sample(tmp_path / "first", FIRST)
    sample = write_sample(tmp_path / "sample", FIRST + SECOND)
    first_ids, second_ids = _chunk_ids(sample, FIRST), _chunk_ids(sample, SECOND)
    assert not first_ids & second_ids and EMBED_GROUP < len(second_ids)

    # Generation 1: three short laws.
    assert _ingest(first, data_dir)[:5] == (len(FIRST), 0, 0, 0, 0)

    # The next ingest (ten laws more, the three already in unchanged) is killed in the middle of its embedding.
    stored, total = _ingest_and_kill(sample, data_dir)
    assert total == len(second_ids)  # the unchanged laws' chunks are not embedded again
    assert stored % EMBED_GROUP == 0 and EMBED_GROUP <= stored < total  # whole groups, with more to come

    # A process started now serves generation 1, exactly, and answers from it.
    before = _probe(data_dir, TOBACCO, BLOOD)
    assert before["generation"] == 1
    assert before["docs"] == sorted(FIRST) and set(before["chunks"]) == first_ids
    tobacco = before["answers"][TOBACCO]
    assert not tobacco["refused"] and tobacco["citations"][0][:2] == ["laws", TOBACCO_LAW]
    assert not {source for _, _, source in before["answers"][BLOOD]["citations"]} & set(SECOND)
    # The killed run's vectors are in the store (at least as many as its bar showed), but nothing serves them.
    have = set(before["stored"])
    assert have >= first_ids and len(have - first_ids) >= stored and have - first_ids <= second_ids

    # The rerun finishes: the ten laws added, the three unchanged, and only the chunks the killed run had not stored
    # are embedded.
    added, updated, unchanged, removed, failed, embedded = _ingest(sample, data_dir)
    assert (added, updated, unchanged, removed, failed) == (len(SECOND), 0, len(FIRST), 0, 0)
    assert embedded == len(second_ids - have)
    assert embedded <= len(second_ids) - stored < len(second_ids)

    # The store holds exactly the catalog's chunks (no duplicates, no orphans), and every sentence vector it needs.
    after = _probe(data_dir, TOBACCO, BLOOD)
    assert after["generation"] == 2 and after["docs"] == sorted(FIRST + SECOND)
    assert set(after["chunks"]) == first_ids | second_ids
    assert after["stored"] == after["chunks"] and after["stored_count"] == len(after["chunks"])
    assert after["sentences"] == after["sentences_needed"] and after["sentences_count"] == len(after["sentences"])
    blood = after["answers"][BLOOD]
    assert not blood["refused"] and blood["citations"][0][:2] == ["laws", BLOOD_LAW]
    assert not after["answers"][TOBACCO]["refused"]
