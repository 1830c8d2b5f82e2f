// Runs the playground page's own script in node against a real server: a minimal DOM stands in for
// the browser (elements by id, text nodes), fetch is node's, with the page's relative URLs resolved
// against BASE. Sends two chat turns from the chat view and prints the transcript as JSON.
import { readFileSync } from "node:fs";

const [page, base] = process.argv.slice(2);
const html = readFileSync(page, "utf8");
const script = html.slice(html.indexOf("<script>") + 8, html.indexOf("</script>"));

class Node_ {
  constructor(tag) { this.tag = tag; this.children = []; this.hidden = false; this.attributes = {}; this.listeners = {}; this._text = ""; this.value = ""; this.disabled = false; this.className = ""; }
  append(...nodes) { this.children.push(...nodes); }
  setAttribute(k, v) { this.attributes[k] = v; }
  addEventListener(type, fn) { this.listeners[type] = fn; }
  set textContent(v) { this.children = []; this._text = v; }
  get textContent() { return this._text + this.children.map((c) => c.textContent ?? c.data).join(""); }
  set innerHTML(v) { this.children = []; this._text = v; }
}
class Text_ { constructor(data) { this.data = data; } appendData(more) { this.data += more; } get textContent() { return this.data; } }
const ids = [...html.matchAll(/id="([a-z_]+)"/g)].map((m) => m[1]);
const elements = Object.fromEntries(ids.map((id) => [id, new Node_(id)]));
for (const [id, value] of [["max_tokens", "8"], ["temperature", "0"], ["top_p", "1"], ["top_k", "0"], ["repetition_penalty", "1"], ["api_key", ""], ["system", ""]]) elements[id].value = value;
globalThis.document = { getElementById: (id) => elements[id], createElement: (tag) => new Node_(tag), createTextNode: (t) => new Text_(t) };
const nodeFetch = globalThis.fetch;
globalThis.fetch = (url, options) => nodeFetch(new URL(url, base), options);
globalThis.performance = performance;

const run = new Function(script + "\nreturn { chat, showView, history: () => history };");
const page_ = run();
await new Promise((resolve) => setTimeout(resolve, 500)); // the /tokenize probe picks the chat view
const chosen = elements.chat_view.hidden ? "completion" : "chat";
const answers = [];
for (const text of process.argv.slice(4)) {
  elements.message.value = text;
  await page_.chat();
  answers.push(page_.history().at(-1).content);
}
console.log(JSON.stringify({ view: chosen, answers, status: elements.status.textContent, history: page_.history() }));
