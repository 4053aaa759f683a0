/* 小玉 Xiaoyu web widget. Add it to a page with one tag:
 *   <script src="https://host/widget.js" data-title="社区小助手" data-welcome="…"></script>
 * data-knowledge-bases="laws,community" (optional, comma-separated): the knowledge bases this page's questions are
 * searched in; without it the server's default scope (XIAOYU_DEFAULT_KNOWLEDGE_BASES).
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
  // Empty: nothing is sent and the server searches its default scope. A name it does not know is a 422 whose
  // message (naming the knowledge bases that exist) is shown as the answer, so a site's mistake is visible at once.
  var SCOPE = (script.getAttribute("data-knowledge-bases") || "").split(",").map(function (n) { return n.trim(); })
    .filter(function (n, i, all) { return n && all.indexOf(n) === i; });
  // One conversation per scope: pages of one site scoped differently must not continue each other's session.
  var STORE_KEY = "xiaoyu-widget:" + BASE + (SCOPE.length ? "|" + SCOPE.join(",") : "");
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
          Array.isArray(saved.messages)) {
        if (!Array.isArray(saved.requests)) saved.requests = [];
        return saved;
      }
    } catch (e) { /* storage blocked or corrupt: start fresh */ }
    // The server issues the session id with the first answer; until then there is none.
    // requests: the resident's 转人工 / 留言, each read back with the session that opened it.
    return { sessionId: null, messages: [], requests: [] };
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
  var polled = false; // the requests' status is fetched once per page, when the panel first opens
  var handoffAnswerId = null; // the answer a 转人工 was offered under, sent with the request

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
  // Which knowledge base a citation came from: shown only when the page searches several (else it says nothing).
  var cardKbLabel = el("dt", { text: "知识库", hidden: "" });
  var cardKb = el("dd", { hidden: "" });
  var cardLink = el("a", { class: "xy-card-link", target: "_blank", rel: "noopener noreferrer", text: "查看原文" });
  var card = el("section", { class: "xy-card", role: "region", "aria-labelledby": "xy-card-title", hidden: "" }, [
    el("div", { class: "xy-card-head" }, [cardTitle, cardClose]),
    cardArticle, cardQuote,
    el("dl", { class: "xy-card-meta" }, [el("dt", { text: "发布机关" }), cardIssuer, el("dt", { text: "发布日期" }), cardDate,
      cardKbLabel, cardKb]),
    cardLink
  ]);

  var input = el("textarea", { id: "xy-input", class: "xy-input", rows: "1", maxlength: String(MAX_CHARS),
    placeholder: "请输入您的问题，按回车发送", "aria-describedby": "xy-note" });
  var sendBtn = el("button", { type: "submit", class: "xy-send", text: "发送" });
  var form = el("form", { class: "xy-form" }, [
    el("label", { class: "xy-sr", for: "xy-input", text: "输入您的问题" }), input, sendBtn
  ]);
  var note = el("p", { id: "xy-note", class: "xy-note", text: "回答摘自已收录的政策文件，仅供参考；具体事项请以有关部门答复为准。" });
  var handoffLink = el("button", { type: "button", class: "xy-link", text: "转人工 / 留言" });
  var foot = el("div", { class: "xy-foot" }, [note, handoffLink]);

  // 转人工 / 留言: a short form above the input; staff see the conversation with it.
  var hoTitle = el("h3", { id: "xy-ho-title", class: "xy-card-title", tabindex: "-1", text: "转人工 / 留言" });
  var hoClose = el("button", { type: "button", class: "xy-card-close", "aria-label": "关闭留言表单", text: "×" });
  var hoMessage = el("textarea", { id: "xy-ho-message", class: "xy-ho-input", rows: "3", maxlength: "1000",
    placeholder: "请写下您的问题或诉求，工作人员会看到您和小玉的对话" });
  var hoContact = el("input", { id: "xy-ho-contact", class: "xy-ho-input", type: "text", maxlength: "100",
    placeholder: "如需回电，请留下称呼和电话" });
  var hoSend = el("button", { type: "submit", class: "xy-send", text: "提交留言" });
  var hoStatus = el("p", { class: "xy-ho-status", role: "status" });
  var handoff = el("form", { class: "xy-handoff", "aria-labelledby": "xy-ho-title", hidden: "" }, [
    el("div", { class: "xy-card-head" }, [hoTitle, hoClose]),
    el("label", { for: "xy-ho-message", text: "留言内容" }), hoMessage,
    el("label", { for: "xy-ho-contact", text: "联系方式（选填）" }), hoContact,
    el("div", { class: "xy-ho-actions" }, [hoSend, hoStatus])
  ]);

  var panel = el("section", { id: "xy-panel", class: "xy-panel", role: "dialog", "aria-modal": "false",
    "aria-labelledby": "xy-title", hidden: "" }, [
    el("header", { class: "xy-head" }, [titleEl, newBtn, closeBtn]), log, card, handoff, form, foot
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
    if (msg.role === "assistant" && msg.answerId && !msg.error) addFeedback(item, msg);
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
    state.requests.forEach(addRequestCard);
  }

  // ---- feedback: 👍 / 👎 under each finished answer, a reason box and 转人工 on 👎 (and under a refusal) -------
  function post(path, body) {
    return fetch(BASE + path, { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify(body) }).then(function (res) {
      return res.json().catch(function () { return {}; }).then(function (data) {
        if (!res.ok) throw new Error(typeof data.detail === "string" ? data.detail : "请求失败（" + res.status + "）");
        return data;
      });
    });
  }

  function offerHandoff(parent, msg, text) {
    var b = el("button", { type: "button", class: "xy-link", text: "转人工 / 留言" });
    b.addEventListener("click", function () { openHandoff(msg.answerId); });
    parent.appendChild(el("p", { class: "xy-offer" }, [text, b]));
  }

  function addFeedback(item, msg) {
    var up = el("button", { type: "button", class: "xy-rate", "aria-label": "有帮助", text: "👍" });
    var down = el("button", { type: "button", class: "xy-rate", "aria-label": "没帮助", text: "👎" });
    var said = el("span", { class: "xy-rate-status", role: "status" });
    var bar = el("div", { class: "xy-feedback", role: "group", "aria-label": "这个回答有帮助吗？" }, [up, down, said]);
    var reason = null;
    function show() {
      up.setAttribute("aria-pressed", String(msg.rating === "up"));
      down.setAttribute("aria-pressed", String(msg.rating === "down"));
    }
    function rate(rating, comment) {
      return post("/api/feedback", { answer_id: msg.answerId, rating: rating, comment: comment || "" }).then(function () {
        msg.rating = rating;
        save();
        show();
        said.textContent = rating === "up" ? "谢谢您的反馈！" : "已收到，我们会改进。";
      }, function (err) { said.textContent = err.message; });
    }
    up.addEventListener("click", function () { rate("up"); if (reason) reason.setAttribute("hidden", ""); });
    down.addEventListener("click", function () {
      rate("down");
      if (reason) { reason.removeAttribute("hidden"); return; }
      var why = el("textarea", { class: "xy-ho-input", rows: "2", maxlength: "500", "aria-label": "哪里不满意（选填）",
        placeholder: "哪里不满意？（选填）" });
      var sendWhy = el("button", { type: "button", class: "xy-link", text: "提交意见" });
      sendWhy.addEventListener("click", function () { rate("down", why.value.trim()); });
      reason = el("div", { class: "xy-reason" }, [why, sendWhy]);
      offerHandoff(reason, msg, "需要工作人员帮忙？");
      item.appendChild(reason);
      why.focus();
    });
    show();
    item.appendChild(bar);
    if (msg.refused) offerHandoff(item, msg, "没找到您要的答案？");
  }

  // ---- hand-off requests ------------------------------------------------------------------------------------
  var STATUS_TEXT = { open: "已提交，等待工作人员处理", answered: "工作人员已答复", closed: "已办结" };

  function addRequestCard(r) {
    var card = el("div", { class: "xy-msg xy-request", "data-request": r.id }, [
      el("p", { class: "xy-request-head", text: "您的留言（编号 " + r.id + "）：" + (STATUS_TEXT[r.status] || r.status) }),
      el("div", { class: "xy-text", text: r.message || "" })
    ]);
    if (r.reply) card.appendChild(el("div", { class: "xy-reply" }, [
      el("strong", { text: "工作人员答复：" }), el("div", { class: "xy-text", text: r.reply })
    ]));
    var old = log.querySelector('[data-request="' + r.id.replace(/[^\w-]/g, "") + '"]');
    if (old) log.replaceChild(card, old); else log.appendChild(card);
  }

  function openHandoff(answerId) {
    hideCard();
    handoffAnswerId = answerId || null;
    hoStatus.textContent = state.sessionId ? "" : "请先向小玉提一个问题，再转人工或留言。";
    handoff.removeAttribute("hidden");
    hoMessage.focus();
  }

  function hideHandoff() {
    if (handoff.hasAttribute("hidden")) return false;
    handoff.setAttribute("hidden", "");
    input.focus();
    return true;
  }

  function submitHandoff() {
    var message = hoMessage.value.trim();
    if (!message) { hoStatus.textContent = "请写下您的问题或诉求。"; hoMessage.focus(); return; }
    if (!state.sessionId) { hoStatus.textContent = "请先向小玉提一个问题，再转人工或留言。"; return; }
    hoSend.disabled = true;
    hoStatus.textContent = "正在提交…";
    var sessionId = state.sessionId;
    post("/api/requests", { session_id: sessionId, answer_id: handoffAnswerId, message: message,
      contact: hoContact.value.trim() }).then(function (data) {
      var r = { id: data.id, sessionId: sessionId, status: data.status, reply: null, message: message };
      state.requests.push(r);
      save();
      hoMessage.value = "";
      hoContact.value = "";
      handoff.setAttribute("hidden", "");
      addRequestCard(r);
      log.scrollTop = log.scrollHeight;
      input.focus();
    }, function (err) { hoStatus.textContent = err.message; }).then(function () { hoSend.disabled = false; });
  }

  // When the resident comes back: the status and any staff reply, once per page.
  function refreshRequests() {
    state.requests.forEach(function (r) {
      if (r.status === "closed") return;
      fetch(BASE + "/api/requests/" + encodeURIComponent(r.id) + "?session_id=" + encodeURIComponent(r.sessionId))
        .then(function (res) {
          if (res.status === 404) { // past the retention period: nothing left to show
            state.requests = state.requests.filter(function (x) { return x !== r; });
            save();
            var gone = log.querySelector('[data-request="' + r.id.replace(/[^\w-]/g, "") + '"]');
            if (gone) gone.remove();
            return;
          }
          if (!res.ok) return;
          return res.json().then(function (data) {
            r.status = data.status;
            r.reply = data.reply || null;
            save();
            addRequestCard(r);
          });
        }).catch(function () { /* offline: the stored status stays */ });
    });
  }

  // ---- citation card -----------------------------------------------------------------------------------
  function showCard(c, fromButton) {
    lastCiteButton = fromButton || null;
    cardTitle.textContent = "【" + c.index + "】《" + c.title + "》";
    cardArticle.textContent = (c.section || "").split(" > ").join(" · ");
    cardQuote.textContent = c.quote;
    cardIssuer.textContent = c.issuer || "—";
    cardDate.textContent = c.date || "—";
    var showKb = SCOPE.length > 1 && !!c.knowledge_base;
    cardKb.textContent = showKb ? c.knowledge_base : "";
    [cardKbLabel, cardKb].forEach(function (n) {
      if (showKb) n.removeAttribute("hidden"); else n.setAttribute("hidden", "");
    });
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

    var payload = { question: question, session_id: state.sessionId };
    if (SCOPE.length) payload.knowledge_bases = SCOPE;
    fetch(BASE + "/api/chat/stream", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(payload)
    }).then(function (res) {
      if (!res.ok) { // 422 (a bad question, an unknown knowledge base), 429 …: the server's own words
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
          if (typeof data.answer_id === "string") answer.answerId = data.answer_id;
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
      if (finished && answer.answerId && state.messages.indexOf(answer) >= 0) addFeedback(view.item, answer);
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
    // Requests stay: each is read back with the session that opened it, not the current one.
    state = { sessionId: null, messages: [], requests: state.requests };
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
      if (!polled) { polled = true; refreshRequests(); }
    } else {
      panel.setAttribute("hidden", "");
      bubble.focus();
    }
  }

  bubble.addEventListener("click", function () { setOpen(!open); });
  closeBtn.addEventListener("click", function () { setOpen(false); });
  cardClose.addEventListener("click", hideCard);
  newBtn.addEventListener("click", resetConversation);
  handoffLink.addEventListener("click", function () { openHandoff(null); });
  hoClose.addEventListener("click", hideHandoff);
  handoff.addEventListener("submit", function (e) { e.preventDefault(); submitHandoff(); });
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
      if (!hideCard() && !hideHandoff()) setOpen(false);
    }
  });

  renderAll();
  function mount() { document.body.appendChild(host); }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
