// The trio-wsmgr demo page: plain JavaScript, no build step, no dependencies.
// It speaks JSON with /ws: it sends {type: "join", room} and {type: "say", text};
// it receives welcome, joined, message, presence, stats and error objects.
// A room's messages come in history envelopes {channel, epoch, offset, data}: after
// a drop the page reconnects by itself (jittered back-off), joins again "since" the
// last position it showed, and the server sends what it missed, in order, once.
"use strict";

const DEFAULT_ROOM = "lobby";
const NAME_KEY = "trio-wsmgr-demo-name";

const $ = (id) => document.getElementById(id);

const state = {
  ws: null,
  me: null,
  node: null,
  room: null,
  wantedRoom: roomFromHash() || DEFAULT_ROOM,
  rooms: new Set(),
  roster: [], // [{name, sockets}]: the room's users over every node (the server's presence)
  retries: 0,
  retryTimer: null,
  shownRoom: null, // the room whose messages are on screen
  position: null, // {epoch, offset} of the last message shown (of shownRoom)
};

function roomFromHash() {
  const room = decodeURIComponent(location.hash.slice(1)).toLowerCase();
  return /^[a-z0-9][a-z0-9-]{0,31}$/.test(room) ? room : null;
}

function wantedName() {
  const fromQuery = new URLSearchParams(location.search).get("name");
  return fromQuery || localStorage.getItem(NAME_KEY) || "";
}

// -- the connection ---------------------------------------------------------------

function connect() {
  clearTimeout(state.retryTimer);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const name = wantedName();
  const query = name ? "?name=" + encodeURIComponent(name) : "";
  const ws = new WebSocket(`${scheme}//${location.host}/ws${query}`);
  state.ws = ws;
  setStatus("connecting", "connecting…");

  ws.addEventListener("open", () => {
    state.retries = 0;
    setStatus("open", "connected");
  });
  ws.addEventListener("message", (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (data && typeof data.offset === "number" && "epoch" in data && "data" in data) {
      onEnvelope(data);
      return;
    }
    const handler = handlers[data.type];
    if (handler) handler(data);
  });
  ws.addEventListener("close", (event) => {
    if (state.ws !== ws) return; // replaced by a newer connection (a rename)
    state.room = null;
    state.roster = [];
    renderUsers();
    const why = event.code === 1001 ? "server going away" : `closed ${event.code}`;
    if (window.__wsmgrHoldReconnect) {
      setStatus("closed", `${why}; reconnection held`);
      return; // a test holds it: window.__wsmgrReleaseReconnect() goes on
    }
    const delay = Math.min(10000, 500 * 2 ** state.retries) * (0.75 + Math.random() / 2);
    state.retries += 1;
    setStatus("closed", `${why}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
    state.retryTimer = setTimeout(connect, delay);
  });
}

// Test hook (tests/test_e2e_browser.py): while window.__wsmgrHoldReconnect is true a
// closed page waits instead of reconnecting, until window.__wsmgrReleaseReconnect()
// connects at once. Nothing sets the flag on its own, so users see the back-off only.
window.__wsmgrReleaseReconnect = () => {
  window.__wsmgrHoldReconnect = false;
  if (state.ws && state.ws.readyState === WebSocket.CLOSED) connect();
};

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(message));
    return true;
  }
  return false;
}

function join(room) {
  state.wantedRoom = room;
  // Resume the room on screen from its last position; a new room starts fresh.
  const since = room === state.shownRoom ? state.position : null;
  send({ type: "join", room, since });
}

// A message of the room, in a history envelope: show it once, in order, and show
// a gap the history could not fill as such.
function onEnvelope(envelope) {
  const last = state.position;
  if (last && last.epoch === envelope.epoch && envelope.offset <= last.offset) return;
  if (last && (last.epoch !== envelope.epoch || envelope.offset !== last.offset + 1)) {
    gapLine();
  }
  state.position = { epoch: envelope.epoch, offset: envelope.offset };
  const data = envelope.data;
  if (data && data.type === "message") handlers.message(data);
}

function gapLine() {
  systemLine("Some messages were lost while you were away and cannot be shown.", "gap");
}

// -- what the server says ---------------------------------------------------------

const handlers = {
  welcome(data) {
    state.me = data.user;
    state.node = data.node;
    localStorage.setItem(NAME_KEY, data.user);
    $("name-input").value = data.user;
    $("stat-me").textContent = data.user;
    $("stat-node").textContent = data.node;
    $("stat-compression").textContent = data.compressed ? "on" : "off";
    for (const room of data.rooms) state.rooms.add(room);
    join(state.wantedRoom);
  },

  joined(data) {
    const resumed = data.room === state.shownRoom;
    if (data.room !== state.room) {
      state.room = data.room;
      state.rooms.add(data.room);
      state.roster = [];
      if (!resumed) {
        $("messages").replaceChildren();
        state.shownRoom = data.room;
        state.position = null;
      }
      history.replaceState(null, "", "#" + data.room);
      systemLine(resumed ? `Back in #${data.room}.` : `You joined #${data.room} as ${state.me}.`);
      if (resumed && state.position && !data.recovered) gapLine();
    }
    if (data.epoch !== null && (!state.position || !data.recovered)) {
      state.position = { epoch: data.epoch, offset: data.offset };
    }
    $("room-title").textContent = "#" + data.room;
    $("room-heading").textContent = "#" + data.room;
    renderRooms();
    renderUsers();
  },

  message(data) {
    if (data.room !== state.shownRoom) return;
    const item = document.createElement("li");
    item.className = data.user === state.me ? "message mine" : "message";
    const time = document.createElement("time");
    const when = new Date(data.time * 1000);
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const who = document.createElement("strong");
    who.textContent = data.user;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = data.text;
    item.append(time, who, text);
    appendLine(item);
  },

  presence(data) {
    if (data.room !== state.room) return;
    state.roster = data.users;
    renderUsers();
  },

  stats(data) {
    $("stat-sockets").textContent = data.node_sockets;
    $("stat-users").textContent = data.node_users;
    $("stat-room").textContent = data.room_sockets;
    $("stat-rtt").textContent = data.rtt_ms === null ? "waiting for a ping…" : `${data.rtt_ms} ms`;
    $("stat-messages").textContent = `${data.messages_in} / ${data.messages_out}`;
  },

  error(data) {
    systemLine(data.message, "error");
  },
};

// -- rendering ----------------------------------------------------------------------

function setStatus(name, text) {
  document.body.dataset.state = name;
  $("status").textContent = text;
}

function appendLine(item) {
  const list = $("messages");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
  list.append(item);
  while (list.children.length > 200) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function systemLine(text, kind = "system") {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text;
  appendLine(item);
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren();
  for (const room of [...state.rooms].sort()) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "#" + room;
    button.dataset.room = room;
    if (room === state.room) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => join(room));
    item.append(button);
    list.append(item);
  }
}

function renderUsers() {
  const list = $("users");
  list.replaceChildren();
  for (const { name, sockets } of state.roster) {
    const item = document.createElement("li");
    item.dataset.user = name;
    item.textContent = name;
    const notes = [];
    if (name === state.me) notes.push("you");
    if (sockets > 1) notes.push(`${sockets} tabs`);
    if (notes.length) {
      const note = document.createElement("small");
      note.textContent = ` (${notes.join(", ")})`;
      item.append(note);
    }
    list.append(item);
  }
}

// -- the forms ------------------------------------------------------------------------

$("say-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("message-input");
  const text = input.value.trim();
  if (text && send({ type: "say", text })) input.value = "";
});

$("room-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("room-input");
  const room = input.value.trim().toLowerCase();
  if (room) {
    join(room);
    input.value = "";
  }
});

$("name-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("name-input").value.trim();
  if (!name || name === state.me) return;
  localStorage.setItem(NAME_KEY, name);
  const url = new URL(location.href);
  url.searchParams.delete("name");
  history.replaceState(null, "", url);
  const old = state.ws;
  connect(); // the new connection first, so the room never looks empty
  if (old) old.close(1000, "renamed");
});

window.addEventListener("hashchange", () => {
  const room = roomFromHash();
  if (room && room !== state.room) join(room);
});

connect();
