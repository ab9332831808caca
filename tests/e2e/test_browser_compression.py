"""Chromium negotiates permessage-deflate with ``xraptor run --compression ...`` and decodes
room pushes (each member's prefix + the shared tail) for many members in one page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from e2e_support import free_port, running, xraptor_command

APP = """
from xraptor.demo import make_server

server = make_server("127.0.0.1", 8765)
"""

#: opens MEMBERS WebSockets from the page, joins each to the demo's room (asking for an
#: acknowledgment), posts every message from the first one, and checks what each got
SCRIPT = """async ({ members, messages }) => {
  const url = `ws://${location.host}/`;
  const opened = await Promise.all(Array.from({ length: members }, (_, i) => new Promise(
    (resolve, reject) => {
      const ws = new WebSocket(url);
      const id = `member-${i}-ü🦖`;
      const got = [];
      ws.onmessage = (event) => got.push(JSON.parse(event.data));
      ws.onerror = () => reject(new Error(`socket ${i} failed`));
      ws.onopen = () => {
        ws.send(JSON.stringify({ request_id: id, payload: JSON.stringify({ chat_id: "zip" }),
          header: { ack: true }, route: "/chat_messages", method: "SUB" }));
        resolve({ ws, id, got });
      };
    })));
  const until = async (check) => {
    for (let n = 0; n < 400 && !check(); n++) await new Promise((r) => setTimeout(r, 25));
    return check();
  };
  if (!await until(() => opened.every((m) => m.got.length === 1))) return { error: "no acks" };
  const poster = opened[0];
  messages.forEach((message, n) => poster.ws.send(JSON.stringify({
    request_id: `post-${n}`, header: {}, route: "/send_message_to_chat_room", method: "POST",
    payload: JSON.stringify({ chat_id: "zip", client_id: "chromium", message }),
  })));
  const expected = 1 + messages.length;
  await until(() => opened.every((m) => m.got.filter((g) => g.method === "SUB").length === expected));
  const wrong = [];
  for (const m of opened) {
    const pushes = m.got.filter((g) => g.method === "SUB").slice(1);
    if (m.got[0].header.ack !== true) wrong.push(`${m.id}: no ack first`);
    if (pushes.length !== messages.length) wrong.push(`${m.id}: ${pushes.length} pushes`);
    pushes.forEach((push, n) => {
      const body = JSON.parse(push.payload);
      if (push.request_id !== m.id || body.message !== messages[n] || body.origin !== "chromium")
        wrong.push(`${m.id}: push ${n} is ${JSON.stringify(push).slice(0, 80)}`);
    });
  }
  const answers = poster.got.filter((g) => g.method === "POST").map((g) => g.payload);
  const extensions = [...new Set(opened.map((m) => m.ws.extensions))];
  opened.forEach((m) => m.ws.close());
  return { wrong, answers, extensions };
}"""

MESSAGES = [
    "hello",
    "olá 🦖 — ünïcödé ✓ 日本語",
    "large: " + "abcdefghijklmnopqrstuvwxyz0123456789" * 8000,
    "hello",
]


@pytest.mark.parametrize("policy", ["shared", "deflate", "none"])
def test_chromium_decodes_room_pushes(tmp_path: Path, browser: Any, policy: str) -> None:
    (tmp_path / "zipapp.py").write_text(APP)
    port = free_port()
    command = xraptor_command("run", "zipapp:server", "--port", str(port), "--compression", policy)
    with running(command, port, cwd=tmp_path):
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        result = page.evaluate(SCRIPT, {"members": 40, "messages": MESSAGES})
    assert result.get("error") is None, result
    assert result["wrong"] == []
    assert result["answers"] == ['{"message": "Message sent"}'] * len(MESSAGES)
    (extensions,) = result["extensions"]  # every socket negotiated the same
    if policy == "none":
        assert extensions == ""
    else:
        assert extensions.startswith("permessage-deflate")
        takeover = "server_no_context_takeover" in extensions
        assert takeover is (policy == "shared")
        if policy == "shared":
            assert "client_no_context_takeover" in extensions
