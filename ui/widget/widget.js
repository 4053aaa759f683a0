/* 小玉 Xiaoyu web widget. Add it to a page with one tag:
 *   <script src="https://host/widget.js" data-title="社区小助手" data-welcome="…"></script>
 * Plain JS, no dependencies, nothing from a CDN. The API base is this script's own origin, so the widget works
 * when embedded on another site (that site must be on the server's XIAOYU_WEB_CORS_ORIGINS list).
 * Safety rule for this file: text from the server or the user only ever reaches the page through textContent /
 * createTextNode and is never parsed as HTML, so a question or a document containing <script> stays text. */
(function () {
  "use strict";
  if (window.__xiaoyuWidget) return; // the tag pasted twice must not add two bubbles
  window.__xiaoyuWidget = true;

  var script = document.currentScript || document.querySelector('script[src*="widget.js"]');
  if (!script) return;
  var BASE = (script.getAttribute("data-api") || new URL(script.src, location.href).origin).replace(/\/+$/, "");
  var TITLE = script.getAttribute("data-title") || "小玉 · 政策问答";
  var WELCOME = script.getAttribute("data-welcome") ||
    "您好！我是小玉，可以解答物业管理、人民调解和党建方面的政策问题，回答都会注明出处。";
  var EXAMPLES = [
    ["物业", "物业费不交会怎么样？"],
    ["调解", "调解协议怎么申请司法确认？"],
    ["党建", "入党需要什么条件？"]
  ];
  var STORE_KEY = "xiaoyu-widget:" + BASE;
  var MAX_KEPT = 30; // messages kept in localStorage
  var MAX_CHARS = 1000;

  // ---- small DOM helpers (text only) ------------------------------------------------------------------
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "class") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }

  function load() {
    try {
      var saved = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
      if (saved && (saved.sessionId === null || typeof saved.sessionId === "string") &&
          Array.isArray(saved.messages)) return saved;
    } catch (e) { /* storage blocked or corrupt: start fresh */ }
    // The server issues the session id with the first answer; until then there is none.
    return { sessionId: null, messages: [] };
  }

  function save() {
    try {
      state.messages = state.messages.slice(-MAX_KEPT);
      localStorage.setItem(STORE_KEY, JSON.stringify(state));
    } catch (e) { /* private mode: the conversation just isn't kept */ }
  }

  var state = load();
  var busy = false;
  var open = false;
  var lastCiteButton = null;

  // ---- build the widget in a shadow root, so the host page's CSS can't break it (and ours can't leak) -----
  var host = el("div", { id: "xiaoyu-widget" });
  var shadow = host.attachShadow({ mode: "open" });
  var root = el("div", { class: "xy-root", hidden: "" });
  var css = el("link", { rel: "stylesheet", href: BASE + "/widget.css" });
  css.addEventListener("load", function () { root.removeAttribute("hidden"); });
  css.addEventListener("error", function () { root.removeAttribute("hidden"); });
  shadow.appendChild(css);
  shadow.appendChild(root);

  var bubble = el("button", { type: "button", class: "xy-bubble", "aria-label": "打开" + TITLE,
    "aria-expanded": "false", "aria-controls": "xy-panel" }, [
    el("span", { class: "xy-bubble-icon", "aria-hidden": "true", text: "问" }),
    el("span", { class: "xy-bubble-text", text: TITLE })
  ]);

  var titleEl = el("h2", { id: "xy-title", class: "xy-title", text: TITLE });
  var newBtn = el("button", { type: "button", class: "xy-new", text: "新对话", "aria-label": "新对话（清空当前对话）" });
  var closeBtn = el("button", { type: "button", class: "xy-close", "aria-label": "关闭对话窗口", text: "×" });
  var log = el("div", { class: "xy-log", role: "log", "aria-live": "polite", "aria-label": "对话记录", tabindex: "0" });

  var cardTitle = el("h3", { id: "xy-card-title", class: "xy-card-title", tabindex: "-1" });
  var cardClose = el("button", { type: "button", class: "xy-card-close", "aria-label": "关闭引用出处", text: "×" });
  var cardArticle = el("p", { class: "xy-card-article" });
  var cardQuote = el("blockquote", { class: "xy-card-quote" });
  var cardIssuer = el("dd");
  var cardDate = el("dd");
  var cardLink = el("a", { class: "xy-card-link", target: "_blank", rel: "noopener noreferrer", text: "查看原文" });
  var card = el("section", { class: "xy-card", role: "region", "aria-labelledby": "xy-card-title", hidden: "" }, [
    el("div", { class: "xy-card-head" }, [cardTitle, cardClose]),
    cardArticle, cardQuote,
    el("dl", { class: "xy-card-meta" }, [el("dt", { text: "发布机关" }), cardIssuer, el("dt", { text: "发布日期" }), cardDate]),
    cardLink
  ]);

  var input = el("textarea", { id: "xy-input", class: "xy-input", rows: "1", maxlength: String(MAX_CHARS),
    placeholder: "请输入您的问题，按回车发送", "aria-describedby": "xy-note" });
  var sendBtn = el("button", { type: "submit", class: "xy-send", text: "发送" });
  var form = el("form", { class: "xy-form" }, [
    el("label", { class: "xy-sr", for: "xy-input", text: "输入您的问题" }), input, sendBtn
  ]);
  var note = el("p", { id: "xy-note", class: "xy-note", text: "回答摘自已收录的政策文件，仅供参考；具体事项请以有关部门答复为准。" });

  var panel = el("section", { id: "xy-panel", class: "xy-panel", role: "dialog", "aria-modal": "false",
    "aria-labelledby": "xy-title", hidden: "" }, [
    el("header", { class: "xy-head" }, [titleEl, newBtn, closeBtn]), log, card, form, note
  ]);
  root.appendChild(bubble);
  root.appendChild(panel);

  // ---- messages ----------------------------------------------------------------------------------------
  function citationLabel(c) {
    var leaf = (c.section || "").split(" > ").pop();
    return "《" + c.title + "》" + (leaf || "");
  }

  // "根据《…》第四十七条：…【1】" → text nodes plus a button per 【n】 that opens the citation card.
  function renderAnswer(node, text, citations) {
    node.textContent = "";
    text.split(/(【\d+】)/).forEach(function (part) {
      var m = /^【(\d+)】$/.exec(part);
      var c = m && (citations || []).filter(function (x) { return String(x.index) === m[1]; })[0];
      if (!c) { if (part) node.appendChild(document.createTextNode(part)); return; }
      var btn = el("button", { type: "button", class: "xy-cite", text: part,
        "aria-label": "查看引用" + c.index + "：" + citationLabel(c) });
      btn.addEventListener("click", function () { showCard(c, btn); });
      node.appendChild(btn);
    });
  }

  function addMessage(msg) {
    var body = el("div", { class: "xy-text" });
    var item = el("div", { class: "xy-msg xy-" + msg.role + (msg.error ? " xy-error" : "") }, [
      el("span", { class: "xy-sr", text: msg.role === "user" ? "您说：" : "小玉说：" }), body
    ]);
    if (msg.role === "assistant" && !msg.error) renderAnswer(body, msg.text, msg.citations);
    else body.textContent = msg.text;
    log.appendChild(item);
    log.scrollTop = log.scrollHeight;
    return { item: item, body: body };
  }

  function addWelcome() {
    var list = el("div", { class: "xy-examples", role: "group", "aria-label": "示例问题" });
    EXAMPLES.forEach(function (ex) {
      var b = el("button", { type: "button", class: "xy-example" }, [
        el("span", { class: "xy-tag", text: ex[0] }), ex[1]
      ]);
      b.addEventListener("click", function () { ask(ex[1]); });
      list.appendChild(b);
    });
    log.appendChild(el("div", { class: "xy-msg xy-assistant xy-welcome" }, [
      el("div", { class: "xy-text", text: WELCOME }),
      el("p", { class: "xy-examples-title", text: "您可以这样问：" }),
      list
    ]));
  }

  function renderAll() {
    log.textContent = "";
    addWelcome();
    state.messages.forEach(function (m) { addMessage(m).item.classList.add("xy-done"); });
  }

  // ---- citation card -----------------------------------------------------------------------------------
  function showCard(c, fromButton) {
    lastCiteButton = fromButton || null;
    cardTitle.textContent = "【" + c.index + "】《" + c.title + "》";
    cardArticle.textContent = (c.section || "").split(" > ").join(" · ");
    cardQuote.textContent = c.quote;
    cardIssuer.textContent = c.issuer || "—";
    cardDate.textContent = c.date || "—";
    if (c.chunk_id) {
      cardLink.href = BASE + "/sources/" + encodeURIComponent(c.chunk_id) + "#cited";
      cardLink.removeAttribute("hidden");
    } else {
      cardLink.setAttribute("hidden", "");
    }
    card.removeAttribute("hidden");
    // The card takes room from the log: keep the marker that opened it in view.
    if (fromButton) fromButton.scrollIntoView({ block: "nearest" });
    cardTitle.focus();
  }

  function hideCard() {
    if (card.hasAttribute("hidden")) return false;
    card.setAttribute("hidden", "");
    if (lastCiteButton && lastCiteButton.isConnected) lastCiteButton.focus(); else input.focus();
    return true;
  }

  // ---- streaming ---------------------------------------------------------------------------------------
  // fetch + a small SSE parser: EventSource can't POST.
  function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder("utf-8");
    var buffer = "";
    function flush(block) {
      var kind = "message", data = [];
      block.split(/\r\n|\r|\n/).forEach(function (line) {
        if (line.indexOf("event:") === 0) kind = line.slice(6).trim();
        else if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
      });
      if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
    }
    function pump() {
      return reader.read().then(function (r) {
        if (r.done) { if (buffer.trim()) flush(buffer); return; }
        buffer += decoder.decode(r.value, { stream: true });
        var parts = buffer.split(/\r\n\r\n|\n\n|\r\r/);
        buffer = parts.pop();
        parts.forEach(flush);
        return pump();
      });
    }
    return pump();
  }

  function setBusy(value) {
    busy = value;
    sendBtn.disabled = value;
    log.setAttribute("aria-busy", value ? "true" : "false");
  }

  function fail(view, text) {
    view.item.classList.add("xy-error");
    view.body.textContent = text;
    state.messages.push({ role: "assistant", text: text, error: true });
  }

  function ask(question) {
    question = (question || "").trim();
    if (!question || busy) return;
    hideCard();
    var userMsg = { role: "user", text: question };
    state.messages.push(userMsg);
    addMessage(userMsg);
    save();
    var answer = { role: "assistant", text: "", citations: [] };
    var view = addMessage(answer);
    view.item.classList.add("xy-pending");
    view.body.textContent = "小玉正在查找相关条文…";
    setBusy(true);
    var finished = false;

    fetch(BASE + "/api/chat/stream", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ question: question, session_id: state.sessionId })
    }).then(function (res) {
      if (!res.ok) {
        return res.json().catch(function () { return {}; }).then(function (body) {
          finished = true;
          fail(view, typeof body.detail === "string" ? body.detail : "请求失败（" + res.status + "），请稍后再试。");
        });
      }
      return readEvents(res, function (kind, data) {
        if (kind === "citations") {
          answer.citations = data.citations || [];
        } else if (kind === "delta") {
          answer.text += data.text || "";
        } else if (kind === "done") {
          finished = true;
          answer.text = data.answer;
          answer.citations = data.citations || [];
          answer.refused = !!data.refused;
          if (typeof data.session_id === "string") state.sessionId = data.session_id;
          state.messages.push(answer);
        } else if (kind === "error") {
          finished = true;
          fail(view, data.detail || "小玉出了点问题，请稍后再试。");
          return;
        }
        view.item.classList.remove("xy-pending");
        if (answer.text) renderAnswer(view.body, answer.text, answer.citations);
        log.scrollTop = log.scrollHeight;
      });
    }).catch(function () {
      finished = true;
      fail(view, "暂时无法连接小玉，请检查网络后再试（如果您是网站管理员，请确认本网站已获授权嵌入小玉）。");
    }).then(function () {
      if (!finished) fail(view, "回答中断了，请再问一次。");
      view.item.classList.remove("xy-pending");
      if (answer.refused) view.item.classList.add("xy-refused");
      view.item.classList.add("xy-done");
      // A long answer is read from its start, not from its last provision.
      if (view.item.offsetHeight > log.clientHeight) log.scrollTop = view.item.offsetTop - 8;
      save();
      setBusy(false);
    });
  }

  function resetConversation() {
    var old = state.sessionId;
    // Best effort: the server forgets the old history; without an id the next answer starts a new session anyway.
    if (old) fetch(BASE + "/api/chat/sessions/" + encodeURIComponent(old), { method: "DELETE" }).catch(function () {});
    state = { sessionId: null, messages: [] };
    save();
    hideCard();
    renderAll();
    input.focus();
  }

  // ---- open / close and keyboard -------------------------------------------------------------------------
  function setOpen(value) {
    open = value;
    bubble.setAttribute("aria-expanded", String(value));
    bubble.setAttribute("aria-label", (value ? "关闭" : "打开") + TITLE);
    root.classList.toggle("xy-open", value);
    if (value) {
      panel.removeAttribute("hidden");
      log.scrollTop = log.scrollHeight;
      input.focus();
    } else {
      panel.setAttribute("hidden", "");
      bubble.focus();
    }
  }

  bubble.addEventListener("click", function () { setOpen(!open); });
  closeBtn.addEventListener("click", function () { setOpen(false); });
  cardClose.addEventListener("click", hideCard);
  newBtn.addEventListener("click", resetConversation);
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    if (busy) return;
    var q = input.value;
    input.value = "";
    ask(q);
  });
  input.addEventListener("keydown", function (e) {
    // Enter sends, Shift+Enter is a new line; never while a Chinese IME is composing (its Enter picks a word).
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      form.requestSubmit ? form.requestSubmit() : form.dispatchEvent(new Event("submit", { cancelable: true }));
    }
  });
  panel.addEventListener("keydown", function (e) {
    if (e.key === "Escape") {
      e.stopPropagation();
      if (!hideCard()) setOpen(false);
    }
  });

  renderAll();
  function mount() { document.body.appendChild(host); }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
