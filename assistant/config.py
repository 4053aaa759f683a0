"""Settings: the only place that reads the environment. Every variable starts with XIAOYU_."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_KB = PROJECT_ROOT / "knowledge_base"


def _group(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore")


class EmbeddingSettings(BaseSettings):
    model_config = _group("XIAOYU_EMBED_")
    backend: Literal["e5", "sentence-transformers"] = "e5"
    # A model name or a local path, for the sentence-transformers backend only.
    model: str = ""
    batch_size: int = 32


class RetrievalSettings(BaseSettings):
    model_config = _group("XIAOYU_RETRIEVAL_")
    top_k: int = 5
    candidates: int = 30  # per retriever, before fusion
    rrf_k: int = 10
    lexical_weight: float = 1.0
    dense_weight: float = 1.0
    # Refusal: evidence below these is "not covered". Tuned on evals/golden.jsonl (see docs/tuning.md).
    min_dense: float = 0.80
    min_overlap: float = 0.34
    strong_dense: float = 0.86


class SplitSettings(BaseSettings):
    model_config = _group("XIAOYU_SPLIT_")
    # e5-small sees 512 tokens; ~1 token per Chinese character plus the header keeps us inside it.
    max_chars: int = 360


class LLMSettings(BaseSettings):
    model_config = _group("XIAOYU_LLM_")
    base_url: str = ""  # empty = LLM off; the extractive answerer is used
    api_key: SecretStr = SecretStr("")
    model: str = ""
    timeout: float = 20.0


class WeChatSettings(BaseSettings):
    model_config = _group("XIAOYU_WECHAT_")
    token: str = ""
    appid: str = ""
    aes_key: str = ""
    appsecret: SecretStr = SecretStr("")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XIAOYU_", extra="ignore")

    data_dir: Path = Path("data")
    knowledge_base: Path = BUNDLED_KB
    # Chroma runs embedded in data_dir unless a server is named here.
    chroma_host: str = ""
    chroma_port: int = 8000
    max_question_chars: int = 1000
    max_history_turns: int = 6  # user+assistant pairs kept per session and used for condensation
    session_ttl_hours: float = 24 * 7
    contact: str = "所在社区居委会、网格员，或拨打 12345 政务服务便民热线"

    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    split: SplitSettings = Field(default_factory=SplitSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    wechat: WeChatSettings = Field(default_factory=WeChatSettings)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
