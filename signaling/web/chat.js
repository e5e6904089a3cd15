// The call's text chat (PROTOCOL.md, "Chat"), for what is hard to say aloud: the spelling of
// a medicine, a name, an address. A log that screen readers announce (role="log", polite),
// a labelled form where Enter sends, and how many characters are left. Lines are shown as
// text, never as HTML, and live only on this page for the length of the call.

/** The server's limit (characters); the input's maxlength says the same. */
const MAX = 500;

/** The server's refusals, as catalogue keys. */
const REFUSALS = {
  chat_too_long: 'chat.too_long',
  chat_invalid: 'chat.invalid',
  chat_rate_limited: 'chat.too_fast',
  chat_off: 'chat.is_off',
};

export class ChatPanel {
  /**
   * `send(msg)` sends a protocol message (false if the connection is down); `words` is
   * i18n.js's { t, time }; `label(role)` names a role.
   */
  constructor({ root, send, words, label }) {
    Object.assign(this, { send, words, label });
    const $ = (id) => root.querySelector(`#${id}`);
    this.log = $('chat-log');
    this.form = $('chat-form');
    this.input = $('chat-text');
    this.left = $('chat-left');
    this.error = $('chat-error');
    this.off = $('chat-off');
    this.button = $('chat-send');
    this.me = null;
    this.pending = '';
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.submit();
    });
    this.input.addEventListener('input', () => {
      this.error.hidden = true;
      this.count();
    });
    this.count();
  }

  /** A new call: who we are, whether the chat is on; earlier lines stay on the page. */
  enter(me, allowed) {
    this.me = me;
    this.setAllowed(allowed);
  }

  submit() {
    const text = this.input.value;
    if (!text.trim()) return this.say('chat.invalid');
    if (!this.send({ type: 'chat', text })) return this.say('chat.not_sent');
    this.pending = text;
    this.input.value = '';
    this.count();
  }

  /** A line the server passed on (ours too: that is the confirmation). */
  add({ from, role, text, sent_at: sentAt }) {
    const self = from === this.me;
    if (self) this.pending = '';
    const item = document.createElement('li');
    item.className = self ? 'chat-line self' : 'chat-line';
    item.dataset.role = role;
    if (self) item.dataset.self = 'yes';
    const who = Object.assign(document.createElement('span'), { className: 'chat-who' });
    const when = Object.assign(document.createElement('time'), { dateTime: sentAt });
    // `dir="auto"`: a line in Arabic reads right to left on an English page, and the reverse.
    const body = Object.assign(document.createElement('p'), { className: 'chat-text', textContent: text, dir: 'auto' });
    item.append(who, ' ', when, body);
    this.relabel(item);
    this.log.append(item);
    // Keep the newest line in view without moving the page.
    this.log.scrollTop = this.log.scrollHeight;
  }

  relabel(item) {
    const { t, time } = this.words;
    item.querySelector('.chat-who').textContent = item.dataset.self ? t('chat.you') : this.label(item.dataset.role);
    const when = item.querySelector('time');
    when.textContent = time(when.dateTime);
  }

  setAllowed(allowed) {
    this.allowed = allowed;
    this.off.hidden = allowed;
    this.input.disabled = !allowed;
    this.button.disabled = !allowed;
  }

  /** An `error` about a line we sent; true if it was one. */
  refused(code) {
    const key = REFUSALS[code];
    if (!key) return false;
    if (code === 'chat_off') this.setAllowed(false);
    // Give the text back to fix or send again, unless something new was typed meanwhile.
    if (this.pending && !this.input.value && code !== 'chat_off') this.input.value = this.pending;
    this.pending = '';
    this.count();
    this.say(key);
    return true;
  }

  say(key) {
    this.error.dataset.key = key;
    this.error.textContent = this.words.t(key);
    this.error.hidden = false;
  }

  count() {
    const left = MAX - this.input.value.length;
    this.left.textContent = this.words.t('chat.left', { count: left });
  }

  /** The language changed: say everything again in it (the lines themselves stay). */
  render() {
    for (const item of this.log.children) this.relabel(item);
    if (this.error.dataset.key) this.error.textContent = this.words.t(this.error.dataset.key);
    this.count();
  }

  /** The lines shown, for the test hook: [{ who, text, self }]. */
  lines() {
    return [...this.log.children].map((li) => ({
      who: li.querySelector('.chat-who').textContent,
      text: li.querySelector('.chat-text').textContent,
      self: Boolean(li.dataset.self),
    }));
  }
}
