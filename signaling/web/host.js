// A host's controls on the page (PROTOCOL.md, "Host controls"): who waits in the lobby (let
// in, turn away), the end for everyone (a second press confirms), more time, an interpreter
// invite, the chat switch and sharing vitals with companions. Every word comes from the
// catalogues, and `render()` says it all again after a change of language.

import * as i18n from './i18n.js';

const { t } = i18n;

/** Minutes a host's "extend" adds. */
export const EXTEND_MIN = 10;

/** A button whose text is the catalogue's `key`. */
export function button(key, onClick, className = 'secondary') {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = t(key);
  b.className = className;
  b.addEventListener('click', onClick);
  return b;
}

/**
 * A second press within five seconds confirms (no modal dialogs: they trap screen readers
 * and tests alike). The armed text is the catalogue's `armedKey`; `announce(key, params)`
 * says what to do.
 */
export function confirmStep(b, armedKey, action, announce) {
  const key = b.dataset.i18n;
  const disarm = () => {
    delete b.dataset.armed;
    if (key) b.dataset.i18n = key;
    b.textContent = key ? t(key) : b.dataset.text || b.textContent;
  };
  b.addEventListener('click', () => {
    if (b.dataset.armed) {
      disarm();
      return action();
    }
    b.dataset.text = b.textContent;
    b.dataset.armed = 'yes';
    if (key) b.dataset.i18n = armedKey;
    b.textContent = t(armedKey);
    announce('host.confirm_again', { action: t(armedKey) });
    setTimeout(disarm, 5000);
  });
}

export class HostControls {
  /**
   * `send(msg)` sends a protocol message; `announce(key, params)` says something in the
   * status line; `roleLabel(role)` names a role.
   */
  constructor({ $, send, announce, roleLabel }) {
    Object.assign(this, { $, send, announce, roleLabel });
    this.waiting = [];
    this.invite = null;
    this.chatAllowed = true;
    confirmStep($('end'), 'host.end_confirm', () => send({ type: 'end' }), announce);
    $('extend').addEventListener('click', () => send({ type: 'extend', minutes: EXTEND_MIN }));
    $('chat-toggle').addEventListener('click', () => send({ type: 'allow_chat', allowed: !this.chatAllowed }));
    $('invite').addEventListener('click', () => send({ type: 'invite_interpreter' }));
  }

  /** Who waits in the lobby; `quiet`: only say it again (a change of language). */
  setWaiting(waiting, quiet = false) {
    this.waiting = waiting;
    const list = this.$('waiting');
    list.replaceChildren();
    if (!waiting.length) {
      list.append(Object.assign(document.createElement('li'), { textContent: t('host.nobody_waiting') }));
    }
    for (const w of waiting) {
      const li = document.createElement('li');
      const name = this.roleLabel(w.role);
      li.append(Object.assign(document.createElement('span'), { textContent: t('host.waiting', { role: name }) }));
      const admit = button('host.let_in', () => this.send({ type: 'admit', participant: w.participant }), '');
      admit.dataset.action = 'admit';
      admit.dataset.participant = w.participant;
      admit.setAttribute('aria-label', t('host.let_in_label', { role: name }));
      const deny = button('host.deny', () => this.send({ type: 'deny', participant: w.participant }));
      deny.setAttribute('aria-label', t('host.deny_label', { role: name }));
      li.append(admit, deny);
      list.append(li);
    }
    if (waiting.length && !quiet) {
      const roles = i18n.list(waiting.map((w) => this.roleLabel(w.role)));
      this.announce('host.waiting_news', { count: waiting.length, roles });
    }
  }

  /** The invite a host asked for: { code, expires (RFC 3339), url }. */
  setInvite(invite) {
    this.invite = invite;
    this.renderInvite();
  }

  setChatAllowed(allowed) {
    this.chatAllowed = allowed;
    const toggle = this.$('chat-toggle');
    toggle.textContent = t(allowed ? 'host.chat_off' : 'host.chat_on');
    toggle.setAttribute('aria-pressed', String(!allowed));
  }

  renderInvite() {
    const inv = this.invite;
    const p = this.$('invite-code');
    p.hidden = !inv;
    if (inv) p.textContent = t('host.invite_code', { code: inv.code, time: i18n.time(inv.expires), url: inv.url });
  }

  /** Say everything again (a change of language). */
  render() {
    this.$('extend').textContent = t('host.extend', { count: EXTEND_MIN });
    this.setChatAllowed(this.chatAllowed);
    this.setWaiting(this.waiting, true);
    this.renderInvite();
  }
}
