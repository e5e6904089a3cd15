// The session protocol (signaling/PROTOCOL.md) over one WebSocket, rejoining with the same
// token when the connection drops. The server lets someone who was in the call straight back
// in for a couple of minutes, so a rejoin after a network change needs no lobby.

/** Join refusals worth retrying: the service or one of its dependencies was unavailable. */
const TRANSIENT = new Set(['sfu_unavailable', 'booking_unavailable', 'jwks_unavailable', 'audit_unavailable', 'join_timeout']);

export class Session {
  /**
   * `onMessage(msg)` gets every server message; `onState(state, detail)` gets
   * `connecting`, `reconnecting` (with the attempt) and `stopped`.
   */
  constructor({ appointment, token, invite, onMessage, onState }) {
    Object.assign(this, { appointment, token, invite, onMessage, onState });
    this.attempt = 0;
    this.stopped = false;
  }

  open() {
    if (this.stopped) return;
    this.onState(this.attempt ? 'reconnecting' : 'connecting', this.attempt);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/v1/ws`);
    this.ws = ws;
    this.entered = false;
    this.lastHeard = Date.now();
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: 'join', v: 1, appointment: this.appointment, token: this.token, invite: this.invite || undefined }));
    };
    ws.onmessage = (e) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      if (msg.type === 'lobby' || msg.type === 'joined') {
        this.entered = true;
        this.attempt = 0;
      }
      if (msg.type === 'error' && !this.entered && !TRANSIENT.has(msg.code)) this.stop();
      if (msg.type === 'pong') return;
      this.onMessage(msg);
    };
    ws.onclose = () => {
      if (ws === this.ws) this.dropped();
    };
    // A dead network often shows as silence, not as a close: ping, and give up after 25 s.
    clearInterval(this.keepalive);
    this.keepalive = setInterval(() => {
      if (Date.now() - this.lastHeard > 25000) return this.reconnect();
      this.send({ type: 'ping' });
    }, 10000);
  }

  send(msg) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  dropped() {
    this.ws = null;
    if (this.stopped) return;
    this.attempt += 1;
    const delay = Math.min(10000, 500 * 2 ** Math.min(this.attempt - 1, 5));
    this.onState('reconnecting', this.attempt);
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.open(), delay);
  }

  /** Drop this connection and join again (ICE failure, `media_lost`, a service restart). */
  reconnect(afterMs = 0) {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
    if (this.stopped) return;
    this.attempt += 1;
    this.onState('reconnecting', this.attempt);
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.open(), afterMs);
  }

  /** For good: after `ended`, `removed`, `denied`, `replaced`, a refused join, or leaving. */
  stop(leave = false) {
    if (leave) this.send({ type: 'leave' });
    this.stopped = true;
    clearInterval(this.keepalive);
    clearTimeout(this.retry);
    if (this.ws) setTimeout(() => this.ws && this.ws.close(), leave ? 200 : 0);
    this.onState('stopped');
  }
}
