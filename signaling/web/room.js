// A shared room seen from above: one avatar per participant, one's own moved with the arrow
// keys or by dragging. Poses go to the SFU on the data channel (sfu/src/spatial/FORMAT.md);
// the SFU sends back where everyone stands (its "roster"), which is what its spatial mix is
// made from, so the map shows what one hears. Everyone faces up the map (forward, -z): a
// voice left of you on the map is heard on your left.

/** Half the width of the floor shown, metres. */
const HALF_M = 5;
const STEP_M = 0.25;
/** At most ~30 poses a second (the SFU keeps the latest; it refuses more than 40). */
const SEND_GAP_MS = 34;
const POSE_VERSION = 1;
const ROSTER_VERSION = 0x81;
const POSE_BYTES = 29;

/** A v1 pose: position in metres, orientation as a unit quaternion (identity: facing -z). */
export function encodePose(x, y, z, q = [0, 0, 0, 1]) {
  const b = new DataView(new ArrayBuffer(POSE_BYTES));
  b.setUint8(0, POSE_VERSION);
  [x, y, z, ...q].forEach((v, i) => b.setFloat32(1 + 4 * i, v, true));
  return b.buffer;
}

/** The SFU's roster: [{ participant, x, y, z, q }], or null for anything else. */
export function decodeRoster(buffer) {
  if (!(buffer instanceof ArrayBuffer) || buffer.byteLength < 2) return null;
  const b = new DataView(buffer);
  if (b.getUint8(0) !== ROSTER_VERSION) return null;
  const count = b.getUint8(1);
  const text = new TextDecoder();
  const out = [];
  let at = 2;
  for (let i = 0; i < count; i += 1) {
    if (at + 1 > b.byteLength) return null;
    const len = b.getUint8(at);
    at += 1;
    if (at + len + POSE_BYTES > b.byteLength || b.getUint8(at + len) !== POSE_VERSION) return null;
    const participant = text.decode(new Uint8Array(buffer, at, len));
    const f = (k) => b.getFloat32(at + len + 1 + 4 * k, true);
    out.push({ participant, x: f(0), y: f(1), z: f(2), q: [f(3), f(4), f(5), f(6)] });
    at += len + POSE_BYTES;
  }
  return out;
}

const clamp = (v) => Math.max(-HALF_M, Math.min(HALF_M, v));

/**
 * Where someone is relative to you, in words (for the list beside the map), in the page's
 * language: `words` is i18n.js's { t, number, list }.
 */
function whereFrom(me, p, words) {
  const dx = p.x - me.x;
  const dz = p.z - me.z;
  const d = Math.hypot(dx, dz);
  if (d < 0.3) return words.t('room.next_to_you');
  const parts = [];
  if (Math.abs(dx) >= 0.3) parts.push(words.t(dx < 0 ? 'room.left' : 'room.right', { metres: words.number(Math.abs(dx), 1) }));
  if (Math.abs(dz) >= 0.3) parts.push(words.t(dz < 0 ? 'room.ahead' : 'room.behind', { metres: words.number(Math.abs(dz), 1) }));
  return words.list(parts, 'unit');
}

export class RoomMap {
  /**
   * `canvas` is drawn on, `list` describes the same in words; `label(participant)` gives a
   * role label and `isInterpreter(participant)` marks interpreters; `words` is i18n.js's
   * { t, number, list }. One map per page, reused by every call.
   */
  constructor({ canvas, list, label, isInterpreter, words }) {
    Object.assign(this, { canvas, list, label, isInterpreter, words });
    this.send = () => false;
    this.poses = new Map(); // participant -> { x, y, z, q }
    this.present = new Set();
    this.me = null;
    this.self = null; // our own pose once we moved (then ours wins over the roster's)
    this.unsent = false;
    this.lastSent = 0;
    canvas.addEventListener('keydown', (e) => this.onKey(e));
    canvas.addEventListener('pointerdown', (e) => {
      canvas.setPointerCapture(e.pointerId);
      this.dragging = true;
      this.placeAtPointer(e);
    });
    canvas.addEventListener('pointermove', (e) => this.dragging && this.placeAtPointer(e));
    const stop = () => { this.dragging = false; };
    canvas.addEventListener('pointerup', stop);
    canvas.addEventListener('pointercancel', stop);
    window.addEventListener('resize', () => this.draw());
  }

  /**
   * A new call (first join or a reconnect): the SFU knows nothing of us yet, so whoever we
   * were and wherever we had moved to is sent again once the channel is open.
   */
  enter(participant, send) {
    if (participant !== this.me) this.self = null;
    this.me = participant;
    this.send = send;
    this.poses.clear();
    if (this.self) this.poses.set(this.me, this.self);
    this.unsent = Boolean(this.self);
  }

  /** Who is in the room now (signaling's members, oneself included). */
  setPresent(participants) {
    this.present = new Set(participants);
    for (const p of this.poses.keys()) if (!this.present.has(p)) this.poses.delete(p);
    this.draw();
  }

  /** A data-channel message from the SFU. */
  onMessage(data) {
    const roster = decodeRoster(data);
    if (!roster) return;
    for (const e of roster) {
      if (e.participant === this.me && this.self) continue;
      this.poses.set(e.participant, e);
    }
    this.draw();
  }

  /** Our own place: where we moved to, else where the SFU put us. */
  mine() {
    return this.self || this.poses.get(this.me) || null;
  }

  /** Move our avatar by (dx, dz) metres: what the arrow keys do. */
  moveBy(dx, dz) {
    const at = this.mine() || { x: 0, z: 0 };
    this.placeAt(at.x + dx, at.z + dz);
  }

  /** Put our avatar at (x, z): what dragging does. */
  placeAt(x, z) {
    const next = { x: clamp(x), y: 0, z: clamp(z), q: [0, 0, 0, 1] };
    const at = this.self;
    if (at && at.x === next.x && at.z === next.z) return;
    this.self = next;
    this.poses.set(this.me, next);
    this.unsent = true;
    this.flush();
    this.draw();
  }

  /** Send our pose if it changed, at most every SEND_GAP_MS; also called when the channel opens. */
  flush() {
    if (!this.unsent || !this.self || this.timer) return;
    const wait = this.lastSent + SEND_GAP_MS - performance.now();
    if (wait > 0) {
      this.timer = setTimeout(() => { this.timer = null; this.flush(); }, wait);
      return;
    }
    const { x, y, z, q } = this.self;
    if (this.send(encodePose(x, y, z, q))) {
      this.unsent = false;
      this.lastSent = performance.now();
    }
  }

  onKey(e) {
    const step = e.shiftKey ? 4 * STEP_M : STEP_M;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    const m = moves[e.key];
    if (!m) return;
    e.preventDefault();
    this.moveBy(m[0], m[1]);
  }

  placeAtPointer(e) {
    const r = this.canvas.getBoundingClientRect();
    if (!r.width) return;
    this.placeAt(((e.clientX - r.left) / r.width * 2 - 1) * HALF_M, ((e.clientY - r.top) / r.height * 2 - 1) * HALF_M);
  }

  /** Everyone shown: [{ participant, label, self, x, z }]. */
  avatars() {
    return [...this.poses.entries()]
      .filter(([p]) => this.present.has(p) || p === this.me)
      .map(([p, pose]) => ({ participant: p, label: this.label(p), self: p === this.me, x: pose.x, z: pose.z, q: pose.q }));
  }

  draw() {
    const c = this.canvas;
    const size = c.clientWidth;
    if (!size) return;
    const dpr = window.devicePixelRatio || 1;
    if (c.width !== Math.round(size * dpr)) { c.width = Math.round(size * dpr); c.height = c.width; }
    const g = c.getContext('2d');
    g.setTransform(c.width / (2 * HALF_M), 0, 0, c.height / (2 * HALF_M), c.width / 2, c.height / 2);
    const px = (2 * HALF_M) / c.width; // one device pixel, in metres
    g.fillStyle = '#eef2f6';
    g.fillRect(-HALF_M, -HALF_M, 2 * HALF_M, 2 * HALF_M);
    g.strokeStyle = '#c9c9c4';
    g.lineWidth = px;
    for (let m = -HALF_M + 1; m < HALF_M; m += 1) {
      g.beginPath(); g.moveTo(m, -HALF_M); g.lineTo(m, HALF_M); g.moveTo(-HALF_M, m); g.lineTo(HALF_M, m); g.stroke();
    }
    const avatars = this.avatars().sort((a, b) => Number(a.self) - Number(b.self));
    for (const a of avatars) {
      // Facing: the head's forward (-z) turned by its orientation.
      const [qx, qy, qz, qw] = a.q;
      const fx = -2 * (qx * qz + qw * qy);
      const fz = -(1 - 2 * (qx * qx + qy * qy));
      const n = Math.hypot(fx, fz) || 1;
      g.strokeStyle = '#1a1a1a';
      g.lineWidth = 0.08;
      g.beginPath(); g.moveTo(a.x, a.z); g.lineTo(a.x + 0.55 * fx / n, a.z + 0.55 * fz / n); g.stroke();
      g.beginPath();
      g.arc(a.x, a.z, 0.35, 0, 2 * Math.PI);
      g.fillStyle = a.self ? '#0b5cad' : this.isInterpreter(a.participant) ? '#f5a300' : '#4a4a4a';
      g.fill();
      if (a.self) { g.lineWidth = 0.1; g.strokeStyle = '#f5a300'; g.stroke(); }
      const text = a.self ? this.words.t('room.you', { role: a.label }) : a.label;
      g.font = `${0.36}px system-ui, sans-serif`;
      const w = g.measureText(text).width;
      const ty = a.z + 0.75 > HALF_M - 0.1 ? a.z - 0.55 : a.z + 0.75;
      g.fillStyle = 'rgba(255, 255, 255, .9)';
      g.fillRect(a.x - w / 2 - 0.08, ty - 0.34, w + 0.16, 0.46);
      g.fillStyle = '#1a1a1a';
      g.textAlign = 'center';
      g.fillText(text, a.x, ty);
    }
    this.describe(avatars);
  }

  describe(avatars) {
    const me = this.mine();
    const { t } = this.words;
    const lines = avatars.filter((a) => !a.self)
      .map((a) => t('room.entry', { role: a.label, where: me ? whereFrom(me, a, this.words) : t('room.placed') }));
    const text = lines.length ? lines : [t('room.nobody')];
    if (this.list.dataset.text === text.join('|')) return;
    this.list.dataset.text = text.join('|');
    this.list.replaceChildren(...text.map((t) => Object.assign(document.createElement('li'), { textContent: t })));
  }
}
