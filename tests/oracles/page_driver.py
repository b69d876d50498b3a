#!/usr/bin/env python3
"""Drives the agent's /view page in headless Chromium as a user would, over
the DevTools protocol (--remote-debugging-pipe: nothing to install), and
prints what happened as one JSON object:

    page_driver.py CHROMIUM URL

- "sorted": for each heading of the top-functions table clicked once and
  then again, the table's column as the page shows it afterwards;
- "drag": a mouse drag over the middle half of the CPU-over-time chart
  (real mouse events at the chart's coordinates): the page's address and
  its "#total" and "#intervals" texts after the navigation it causes.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

chromium, url = sys.argv[1], sys.argv[2]
DEADLINE = time.monotonic() + 120

to_chrome_r, to_chrome_w = os.pipe()
from_chrome_r, from_chrome_w = os.pipe()


def child_fds():
    # Runs before the child's other descriptors would be closed, hence
    # close_fds=False: the pipes are close-on-exec, the copies at 3 and 4
    # are not.
    # (Copies first: either pipe may already sit at 3 or 4.)
    read, write = os.dup(to_chrome_r), os.dup(from_chrome_w)
    os.dup2(read, 3)
    os.dup2(write, 4)
    os.set_inheritable(3, True)
    os.set_inheritable(4, True)


profile = tempfile.TemporaryDirectory()
proc = subprocess.Popen(
    [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
     "--no-first-run", "--disable-background-networking",
     "--disable-component-update", "--disable-sync", "--window-size=1400,1600",
     "--remote-debugging-pipe", "--user-data-dir=" + profile.name, "about:blank"],
    close_fds=False, preexec_fn=child_fds,
    stdout=subprocess.DEVNULL, stderr=None if os.environ.get("PAGE_DRIVER_DEBUG") else subprocess.DEVNULL)
os.close(to_chrome_r)
os.close(from_chrome_w)
inbox = b""
events = []
next_id = 0


def receive():
    """One message from Chromium (messages end with a NUL byte)."""
    global inbox
    while b"\0" not in inbox:
        if time.monotonic() > DEADLINE:
            sys.exit("chromium: no answer within the deadline")
        chunk = os.read(from_chrome_r, 1 << 16)
        if not chunk:
            sys.exit("chromium closed its pipe")
        inbox += chunk
    message, inbox = inbox.split(b"\0", 1)
    return json.loads(message)


def call(method, session=None, **params):
    global next_id
    next_id += 1
    message = {"id": next_id, "method": method, "params": params}
    if session:
        message["sessionId"] = session
    os.write(to_chrome_w, json.dumps(message).encode() + b"\0")
    while True:
        reply = receive()
        if reply.get("id") == next_id:
            if "error" in reply:
                sys.exit(f"{method}: {reply['error']}")
            return reply.get("result", {})
        events.append(reply)


def wait_for(event):
    for i, e in enumerate(events):
        if e.get("method") == event:
            del events[: i + 1]
            return e
    while True:
        e = receive()
        if e.get("method") == event:
            return e


def evaluate(session, expression):
    result = call("Runtime.evaluate", session, expression=expression,
                  returnByValue=True, awaitPromise=True)
    if "exceptionDetails" in result:
        sys.exit(f"script error: {result['exceptionDetails']}")
    return result["result"].get("value")


target = call("Target.createTarget", url="about:blank")["targetId"]
session = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
call("Page.enable", session)
call("Page.navigate", session, url=url)
wait_for("Page.loadEventFired")

column = """(i) => Array.from(document.querySelectorAll('#top tbody tr'))
    .map(r => r.cells[i].dataset.v || r.cells[i].textContent)"""
headings = evaluate(session, "Array.from(document.querySelectorAll('#top th')).map(t => t.textContent)")
sorted_columns = {}
for i, heading in enumerate(headings):
    clicks = []
    for _ in range(2):
        evaluate(session, f"document.querySelectorAll('#top th')[{i}].click()")
        clicks.append(evaluate(session, f"({column})({i})"))
    sorted_columns[heading] = clicks

before = {
    "total": evaluate(session, "document.getElementById('total').textContent"),
    "from": evaluate(session, "+document.getElementById('chart').dataset.from"),
    "to": evaluate(session, "+document.getElementById('chart').dataset.to"),
}
box = evaluate(session, """(() => { const r = document.getElementById('chart').getBoundingClientRect();
    return [r.left, r.top, r.width, r.height]; })()""")
left, top, width, height = box
y = top + height / 2
for kind, x in [("mousePressed", left + width * 0.25), ("mouseMoved", left + width * 0.5),
                ("mouseReleased", left + width * 0.75)]:
    call("Input.dispatchMouseEvent", session, type=kind, x=x, y=y, button="left",
         buttons=1 if kind != "mouseReleased" else 0, clickCount=1)
wait_for("Page.loadEventFired")
after = {
    "search": evaluate(session, "window.location.search"),
    "total": evaluate(session, "document.getElementById('total').textContent"),
    "intervals": evaluate(session, "document.getElementById('intervals').textContent"),
}
print(json.dumps({"headings": headings, "sorted": sorted_columns,
                  "drag": {"before": before, "after": after}}))
proc.kill()
proc.wait()
