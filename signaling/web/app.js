// The reference web client: join from a link (or, in dev mode, a demo picker), check devices,
// wait in the lobby, hold the consultation. It speaks only the public session protocol
// (signaling/PROTOCOL.md). No names are shown anywhere: people are FHIR references and
// appear by role.
// In a shared room (`room_kind` "shared") the call also shows the room from above
// (room.js) and plays the SFU's stereo mix instead of everyone's own audio.

import { Session } from './session.js';
import { Call, levelMeter, openCamera, openDevices } from './media.js';
import { RoomMap } from './room.js';
import { ChatPanel } from './chat.js';
import { HostControls, button, confirmStep } from './host.js';
import { VitalsEntry, VitalsMonitor } from './vitals.js';
import { NetworkStatus, relayOnly } from './network.js';
import * as i18n from './i18n.js';

const { t } = i18n;
const $ = (id) => document.getElementById(id);
const ROLES = new Set(['host', 'patient', 'interpreter', 'companion']);

/** Why the consultation ended, as the catalogue says it (`ended.<reason>`). */
const ENDED = new Set(['host_ended', 'time_over', 'cancelled', 'denied_by_host', 'removed', 'replaced', 'left']);

/** Join refusals the catalogue explains (`refused.<code>`); others get `refused.other`. */
const REFUSED = new Set(['token_expired', 'too_early', 'too_late', 'not_a_participant', 'appointment_not_found',
  'appointment_status', 'consultation_ended', 'removed_by_host', 'invite_invalid', 'participant_declined']);

const app = {
  view: 'none',
  local: new MediaStream(),
  role: null,
  me: null,
  members: [],
  tiles: new Map(), // participant -> { el, video, stream, role }
  hostMuted: new Map(), // participant -> { audio, video }
  trackKinds: new Map(), // track id -> kind
  quality: null,
  endedReason: null,
  roomKind: 'consultation',
  map: null,
  chat: null,
  chatAllowed: true,
  network: new NetworkStatus({ precall: $('network'), call: $('path'), words: i18n }),
  iceServers: [],
  // What the page says, kept as catalogue keys so a change of language says it again.
  said: { status: null, problems: [], warning: null, ended: null, quality: null, lobby: null },
};

/** The stream id of the shared room's mix (PROTOCOL.md, Shared rooms). */
const MIX = 'spatial-mix';

function show(view) {
  app.view = view;
  for (const id of ['start', 'precall', 'lobby', 'call', 'ended']) $(id).hidden = id !== view;
  const heading = document.querySelector(`#${view} h2`);
  if (heading) { heading.tabIndex = -1; heading.focus({ preventScroll: true }); }
}

/** Say `key` in the status line (announced to screen readers). */
function announce(key, params = {}) {
  app.said.status = [key, params];
  $('status').textContent = t(key, params);
}

/** Show `key` in `el` now and after every change of language. */
function setText(el, key) {
  el.dataset.i18n = key;
  el.textContent = t(key);
}

function roleLabel(role) {
  return t(ROLES.has(role) ? `role.${role}` : 'role.unknown');
}

// ---- Start: a link, or the dev picker ----------------------------------------------------

async function start() {
  const params = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  const appointment = params.get('appointment');
  const invite = params.get('invite') || undefined;
  let token = fragment.get('token');
  if (appointment && token) {
    sessionStorage.setItem(`token:${appointment}`, token);
    history.replaceState(null, '', location.pathname + location.search); // the token leaves the address bar
  } else if (appointment) {
    token = sessionStorage.getItem(`token:${appointment}`);
  }
  if (appointment && token) return precall({ appointment, token, invite });
  const res = await fetch('/dev/identities').catch(() => null);
  if (!res || !res.ok) {
    show('ended');
    setText($('ended-title'), 'start.no_link_title');
    app.said.ended = ['start.no_link', {}];
    renderEnded();
    return;
  }
  const list = $('start-identities');
  (await res.json()).forEach((id, i) => {
    const label = document.createElement('label');
    const input = Object.assign(document.createElement('input'), { type: 'radio', name: 'who', value: id.fhir_user, required: true, checked: i === 0 });
    label.append(input, ` ${id.label} (${id.fhir_user})`);
    list.append(label);
  });
  show('start');
  announce('start.dev_mode');
  $('start-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const r = await fetch('/dev/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ fhir_user: form.get('who') }) });
    if (!r.ok) return announce('start.token_failed');
    const appt = form.get('appointment').trim();
    const code = form.get('invite').trim() || undefined;
    const lang = new URLSearchParams(location.search).get('lang');
    const query = new URLSearchParams({ appointment: appt });
    if (code) query.set('invite', code);
    if (lang) query.set('lang', lang);
    history.replaceState(null, '', `/?${query}`);
    precall({ appointment: appt, token: (await r.json()).token, invite: code });
  });
}

// ---- Pre-call check ---------------------------------------------------------------------

async function precall(link) {
  show('precall');
  app.devicesChecked = false;
  announce('precall.checking');
  let stopMeter = () => {};
  const check = async () => {
    stopMeter();
    app.local.getTracks().forEach((t) => t.stop());
    const { stream, problems } = await openDevices(true);
    app.local = stream;
    $('preview').srcObject = stream;
    $('no-camera').hidden = stream.getVideoTracks().length > 0;
    app.said.problems = problems;
    renderProblems();
    stopMeter = levelMeter(stream, $('level'));
    announce(problems.length ? 'precall.some_missing' : 'precall.ready');
    app.devicesChecked = true;
  };
  await check();
  app.network.check(link.appointment, link.token);
  $('retry-devices').onclick = check;
  const go = (audioOnly) => {
    stopMeter();
    if (audioOnly) app.local.getVideoTracks().forEach((t) => { t.stop(); app.local.removeTrack(t); });
    join(link);
  };
  $('join').onclick = () => go(false);
  $('join-audio').onclick = () => go(true);
}

// ---- The session ------------------------------------------------------------------------

function join(link) {
  app.session = new Session({
    ...link,
    onMessage: onMessage,
    onState: (state, attempt) => {
      if (state === 'connecting') announce('status.connecting');
      if (state === 'reconnecting') {
        closeCall();
        announce(attempt > 1 ? 'status.reconnecting_attempt' : 'status.reconnecting', { count: attempt });
        setQuality('reconnecting', 'quality.reconnecting');
      }
    },
  });
  app.session.open();
}

/** The end: `said` is what to tell ([key, params]), else the reason's own words. */
function finish(reason, said) {
  app.endedReason = reason;
  app.session.stop(reason === 'left');
  closeCall();
  app.local.getTracks().forEach((track) => track.stop());
  app.said.ended = said || [ENDED.has(reason) ? `ended.${reason}` : 'ended.other', {}];
  renderEnded();
  show('ended');
  announce('status.ended');
}

function renderEnded() {
  if (app.said.ended) $('ended-reason').textContent = t(...app.said.ended);
}

function renderProblems() {
  const problems = app.said.problems;
  $('device-message').hidden = problems.length === 0;
  $('device-message').textContent = problems.map((p) => t(p.key, { error: p.error })).join(' ');
}

function onMessage(m) {
  switch (m.type) {
    case 'lobby':
      closeCall();
      app.role = m.role;
      app.me = m.participant;
      app.said.lobby = { role: m.role, starts: m.starts_at, ends: m.ends_at };
      renderLobby();
      show('lobby');
      return announce('lobby.status');
    case 'returned_to_lobby':
      closeCall();
      show('lobby');
      return announce('lobby.returned');
    case 'joined':
      app.role = m.role;
      app.me = m.participant;
      app.closesAt = m.closes_at;
      app.roomKind = m.room_kind || 'consultation';
      app.chatAllowed = m.chat_allowed !== false;
      app.iceServers = m.ice_servers || [];
      return enterCall(m.members);
    case 'members_changed':
      return setMembers(m.members);
    case 'lobby_changed':
      return host.setWaiting(m.waiting);
    case 'sdp':
      return app.call && app.call.onSdp(m.description);
    case 'track_published':
      return app.trackKinds.set(m.track, m.kind);
    case 'track_ended':
      return removeTrack(m.participant, m.track);
    case 'track_muted': {
      const kind = app.trackKinds.get(m.track);
      if (kind) hostMutedOf(m.participant)[kind] = m.muted;
      return renderTile(m.participant);
    }
    case 'muted_by_host':
      hostMutedOf(app.me)[m.kind] = m.muted;
      renderTile(app.me);
      return announce(`status.host_${m.muted ? 'muted' : 'unmuted'}.${m.kind === 'audio' ? 'audio' : 'video'}`);
    case 'active_speaker':
      app.speaker = m.participant;
      for (const p of app.tiles.keys()) renderTile(p);
      return;
    case 'quality':
      app.quality = m;
      return;
    case 'warning':
      app.said.warning = m.closes_at;
      renderWarning();
      return announce('status.ends_at', { time: i18n.time(m.closes_at) });
    case 'extended':
      app.closesAt = m.closes_at;
      app.said.warning = null;
      renderWarning();
      return announce('status.extended', { time: i18n.time(m.closes_at) });
    case 'invite': {
      const url = `${location.origin}/?appointment=${encodeURIComponent(app.session.appointment)}&invite=${encodeURIComponent(m.code)}`;
      return host.setInvite({ code: m.code, expires: m.expires_at, url });
    }
    case 'chat':
      return app.chat && app.chat.add(m);
    case 'chat_allowed':
      app.chatAllowed = m.allowed;
      if (app.chat) app.chat.setAllowed(m.allowed);
      host.setChatAllowed(m.allowed);
      return announce(m.allowed ? 'chat.turned_on' : 'chat.turned_off');
    case 'denied':
      return finish(m.code || 'denied_by_host');
    case 'removed':
    case 'replaced':
      return finish(m.type);
    case 'ended':
      if (m.reason === 'service_restart') return app.session.reconnect(1000);
      return finish(m.reason);
    case 'reconnect':
      return app.session.reconnect(m.after_ms);
    case 'error':
      return onError(m);
    default:
  }
}

function onError(m) {
  if (m.code === 'glare') return app.call && app.call.onOfferRefused('glare');
  if (m.code === 'media_lost') return app.session.reconnect();
  if (!app.session.entered) {
    if (app.session.stopped) return finish(m.code, REFUSED.has(m.code) ? [`refused.${m.code}`, {}] : ['refused.other', { code: m.code }]);
    return announce('status.busy');
  }
  if (app.chat && app.chat.refused(m.code)) return;
  console.warn('server error', m.code);
  announce('status.failed', { code: m.code });
}

function renderLobby() {
  const l = app.said.lobby;
  if (!l) return;
  $('lobby-role').textContent = t(ROLES.has(l.role) ? `lobby.you_are.${l.role}` : 'lobby.you_are.patient');
  const timed = Boolean(l.starts && l.ends);
  $('lobby-time').hidden = !timed;
  if (!timed) return;
  const started = new Date(l.starts).getTime() <= Date.now();
  $('lobby-time').textContent = `${t('lobby.time', { start: i18n.time(l.starts), end: i18n.time(l.ends) })} ${
    t(started ? 'lobby.started' : 'lobby.starts', { relative: i18n.relative(l.starts) })}`;
}

function renderWarning() {
  $('warning').hidden = !app.said.warning;
  if (app.said.warning) $('warning').textContent = t('status.ends_at', { time: i18n.time(app.said.warning) });
}

// ---- The call ---------------------------------------------------------------------------

function enterCall(members) {
  closeCall();
  show('call');
  $('host').hidden = app.role !== 'host';
  const shared = app.roomKind === 'shared';
  $('room').hidden = !shared;
  announce(shared ? 'call.in_shared' : 'call.in_consultation', { time: i18n.time(app.closesAt) });
  chatPanel().enter(app.me, app.chatAllowed);
  host.setChatAllowed(app.chatAllowed);
  app.call = new Call({
    send: (msg) => app.session.send(msg),
    onTrack: addTrack,
    onTrackRemoved: removeTrack,
    onConnection: onConnection,
    shared,
    onChannelOpen: () => app.map && app.map.flush(),
    onChannelMessage: (data) => app.map && app.map.onMessage(data),
    onVital: (reading) => vitalsPanel().monitor && app.vitals.monitor.show(reading),
    iceServers: app.iceServers,
    relay: relayOnly(),
  });
  const call = app.call;
  setupVitals(shared, (reading) => call === app.call && call.sendVital(reading));
  if (shared) {
    const call = app.call;
    roomMap().enter(app.me, (buffer) => call === app.call && call.sendPose(buffer));
  }
  app.call.start(app.local);
  setMembers(members);
  updateButtons();
}

/**
 * Vitals in a consultation: the patient may send readings; clinicians see them, and
 * companions when a host shares them (the panel shows with the first reading).
 */
function setupVitals(shared, send) {
  const panel = $('vitals');
  panel.replaceChildren();
  app.vitals = { monitor: null };
  panel.hidden = true;
  $('share-vitals').checked = false;
  if (shared) return;
  const { t } = i18n;
  if (app.role === 'patient') {
    new VitalsEntry({ root: panel, t, send });
    panel.hidden = false;
  } else if (app.role === 'host' || app.role === 'companion') {
    app.vitals.monitor = new VitalsMonitor({ root: panel, t, formatTime: (d) => i18n.time(d.toISOString()) });
    panel.hidden = app.role !== 'host';
  }
}

function vitalsPanel() {
  if (app.vitals && app.vitals.monitor) $('vitals').hidden = false;
  return app.vitals || {};
}

/** The page's one map of the shared room, made on first use. */
function roomMap() {
  if (!app.map) {
    const roleOf = (p) => (p === app.me ? app.role : (app.members.find((m) => m.participant === p) || {}).role);
    app.map = new RoomMap({
      canvas: $('room-map'),
      list: $('room-list'),
      label: (p) => roleLabel(roleOf(p)),
      isInterpreter: (p) => roleOf(p) === 'interpreter',
      words: i18n,
    });
  }
  return app.map;
}

/** The page's one chat panel, made on first use. */
function chatPanel() {
  if (!app.chat) {
    app.chat = new ChatPanel({
      root: $('chat'),
      send: (msg) => Boolean(app.session && app.session.send(msg)),
      words: i18n,
      label: roleLabel,
    });
  }
  return app.chat;
}

function closeCall() {
  app.members = [];
  $('mix').srcObject = null;
  if (!app.call) return;
  app.call.close();
  app.call = null;
  app.network.update(null);
  clearTimeout(app.iceTimer);
  for (const [p, t] of app.tiles) {
    if (p !== app.me) t.stream.getTracks().forEach((tr) => t.stream.removeTrack(tr));
    renderTile(p);
  }
}

function onConnection(state) {
  clearTimeout(app.iceTimer);
  if (app.call) app.network.update(state === 'connected' ? app.call.pc : null);
  if (state === 'failed') return app.session.reconnect();
  if (state === 'disconnected') {
    setQuality('poor', 'quality.unstable');
    app.iceTimer = setTimeout(() => app.call && app.call.pc.connectionState !== 'connected' && app.session.reconnect(), 8000);
  }
}

function setMembers(members) {
  const before = new Set(app.members.map((m) => m.participant));
  const now = new Set(members.map((m) => m.participant));
  const came = members.filter((m) => !before.has(m.participant) && m.participant !== app.me);
  const went = app.members.filter((m) => !now.has(m.participant));
  const news = [...came.map((m) => ['status.joined', m.role]), ...went.map((m) => ['status.left', m.role])];
  if (before.size && news.length) {
    // Said again after a change of language, as the rest of the status.
    app.said.status = null;
    const say = () => news.map(([key, role]) => t(key, { role: roleLabel(role) })).join(' ');
    $('status').textContent = say();
    app.said.news = say;
  }
  app.members = members;
  const present = new Set([app.me, ...members.map((m) => m.participant)]);
  for (const [p, t] of app.tiles) {
    if (!present.has(p)) { t.el.remove(); app.tiles.delete(p); }
  }
  const self = tile(app.me, app.role).video;
  if (self.srcObject !== app.local) self.srcObject = app.local;
  for (const m of members) tile(m.participant, m.role);
  if (app.roomKind === 'shared' && app.map) app.map.setPresent([...present]);
}

function tile(participant, role) {
  let t = app.tiles.get(participant);
  if (!t) {
    const el = document.createElement('figure');
    el.className = 'tile';
    const video = Object.assign(document.createElement('video'), { autoplay: true, playsInline: true });
    const stream = new MediaStream();
    if (participant === app.me) video.muted = true; else video.srcObject = stream;
    const label = document.createElement('figcaption');
    label.className = 'label';
    const controls = document.createElement('div');
    controls.className = 'controls';
    const frame = document.createElement('div');
    frame.className = 'frame';
    frame.append(video, label);
    el.append(frame, controls);
    t = { el, video, stream, role, label, controls };
    app.tiles.set(participant, t);
    if (participant === app.me) $('tiles').prepend(el); else $('tiles').append(el);
  }
  t.role = role;
  renderTile(participant);
  return t;
}

function hostMutedOf(participant) {
  if (!app.hostMuted.has(participant)) app.hostMuted.set(participant, { audio: false, video: false });
  return app.hostMuted.get(participant);
}

function renderTile(participant) {
  const t = app.tiles.get(participant);
  if (!t) return;
  const self = participant === app.me;
  const muted = hostMutedOf(participant);
  const stream = self ? app.local : t.stream;
  const hasVideo = stream.getVideoTracks().some((v) => v.readyState === 'live') && !muted.video;
  t.el.classList.toggle('no-video', !hasVideo);
  t.el.dataset.participant = participant;
  t.el.dataset.role = t.role;
  const silent = muted.audio || (self && !micOn());
  const speaking = participant === app.speaker;
  t.el.classList.toggle('speaking', speaking);
  // The interpreter is marked (a badge, not only a colour); so is who is speaking.
  const name = roleLabel(t.role);
  const role = Object.assign(document.createElement('span'), { textContent: name });
  if (t.role === 'interpreter') role.className = 'badge';
  const [before, after] = self ? i18n.t('tile.you', { role: '\u0000' }).split('\u0000') : ['', ''];
  t.label.replaceChildren(before, role, after, silent ? i18n.t('tile.muted') : '', speaking ? i18n.t('tile.speaking') : '');
  t.el.setAttribute('aria-label', t.label.textContent);
  t.el.querySelector('.frame').dataset.noVideo = i18n.t('tile.camera_off');
  t.controls.replaceChildren();
  if (app.role === 'host' && !self) {
    const mute = button(muted.audio ? 'call.unmute' : 'call.mute', () => app.session.send({ type: 'mute', participant, kind: 'audio', muted: !muted.audio }));
    mute.dataset.action = 'mute';
    mute.setAttribute('aria-label', i18n.t(muted.audio ? 'host.unmute_label' : 'host.mute_label', { role: name }));
    const back = button('host.to_lobby', () => app.session.send({ type: 'return_to_lobby', participant }));
    back.setAttribute('aria-label', i18n.t('host.to_lobby_label', { role: name }));
    const remove = button('host.remove', () => {}, 'danger');
    confirmStep(remove, 'host.remove_confirm', () => app.session.send({ type: 'remove', participant }), announce);
    remove.setAttribute('aria-label', i18n.t('host.remove_label', { role: name }));
    t.controls.append(mute, back, remove);
  }
}

function addTrack(participant, track) {
  if (participant === MIX) {
    // Everyone's voice, mixed for us in stereo: played by an <audio> element (which also
    // lets Web Audio read a remote stream in Chromium).
    $('mix').srcObject = new MediaStream([track]);
    $('mix').play().catch(() => {});
    return;
  }
  const t = app.tiles.get(participant) || tile(participant, (app.members.find((m) => m.participant === participant) || {}).role);
  t.stream.getTracks().filter((old) => old.kind === track.kind).forEach((old) => t.stream.removeTrack(old));
  t.stream.addTrack(track);
  track.addEventListener('ended', () => removeTrack(participant, track.id));
  t.video.play().catch(() => {});
  renderTile(participant);
}

function removeTrack(participant, trackId) {
  const t = app.tiles.get(participant);
  if (!t) return;
  t.stream.getTracks().filter((tr) => tr.id === trackId).forEach((tr) => t.stream.removeTrack(tr));
  renderTile(participant);
}

// ---- Controls ---------------------------------------------------------------------------

function micOn() {
  return app.local.getAudioTracks().some((t) => t.enabled);
}

function updateButtons() {
  const mic = app.local.getAudioTracks()[0];
  $('mic').disabled = !mic;
  $('mic').textContent = t(mic && !mic.enabled ? 'call.unmute' : 'call.mute');
  $('mic').setAttribute('aria-pressed', String(Boolean(mic && !mic.enabled)));
  const cam = app.local.getVideoTracks().length > 0;
  $('camera').textContent = t(cam ? 'call.camera_off' : 'call.camera_on');
  $('camera').setAttribute('aria-pressed', String(!cam));
  renderTile(app.me);
}

$('mic').addEventListener('click', () => {
  app.local.getAudioTracks().forEach((t) => { t.enabled = !t.enabled; });
  updateButtons();
  announce(micOn() ? 'status.mic_on' : 'status.mic_off');
});

$('camera').addEventListener('click', async () => {
  const [current] = app.local.getVideoTracks();
  if (current) {
    current.stop();
    app.local.removeTrack(current);
    if (app.call) app.call.setCamera(null);
    announce('status.camera_off');
  } else {
    try {
      const track = await openCamera();
      app.local.addTrack(track);
      if (app.call) app.call.setCamera(track);
      announce('status.camera_on');
    } catch (e) {
      announce('status.camera_failed', { error: e.name });
    }
  }
  tile(app.me, app.role).video.srcObject = app.local;
  updateButtons();
});

$('leave').addEventListener('click', () => finish('left'));
$('share-vitals').addEventListener('change', (e) => app.session.send({ type: 'share_vitals', companions: e.target.checked }));
$('leave-lobby').addEventListener('click', () => finish('left'));
const host = new HostControls({ $, send: (msg) => app.session.send(msg), announce, roleLabel });

// ---- Connection quality: the SFU's view of our link, and our own getStats -------------

/** The connection indicator: a level (for its colour), the catalogue's key, the details. */
function setQuality(level, key, detail = []) {
  app.said.quality = [level, key, detail];
  const q = $('quality');
  q.className = `quality ${level}`;
  const text = t(key);
  if (q.textContent !== text) q.textContent = text;
  q.title = i18n.list(detail.map(([k, params]) => t(k, params)), 'unit');
}

setInterval(async () => {
  if (!app.call || app.view !== 'call') return;
  const s = await app.call.stats();
  if (s.state !== 'connected') {
    const key = { new: 'quality.connecting', connecting: 'quality.connecting', disconnected: 'quality.unstable' }[s.state];
    return setQuality('fair', key || 'quality.lost');
  }
  app.network.update(app.call.pc);
  const q = app.quality || {};
  const rtt = q.rtt_ms ?? s.rttMs;
  const loss = Math.max(q.loss_up_pct || 0, q.loss_down_pct || 0);
  const level = loss < 2 && (rtt == null || rtt < 250) ? 'good' : loss < 10 && rtt < 500 ? 'fair' : 'poor';
  const parts = [rtt != null && ['quality.rtt', { ms: Math.round(rtt) }], ['quality.loss', { percent: i18n.number(loss, 1) }],
    q.jitter_ms != null && ['quality.jitter', { ms: Math.round(q.jitter_ms) }],
    q.kbps_up != null && ['quality.rate', { up: Math.round(q.kbps_up), down: Math.round(q.kbps_down) }]].filter(Boolean);
  setQuality(level, `quality.${level}`, parts);
}, 2000);

// ---- Test hook: read-only views of the page's state -----------------------------------

window.metaclinic = {
  view: () => app.view,
  role: () => app.role,
  status: () => $('status').textContent,
  endedText: () => $('ended-reason').textContent,
  tiles: () => [...app.tiles.values()].map((t) => ({ role: t.role, label: t.label.textContent, marked: !!t.label.querySelector('.badge'), speaking: t.el.classList.contains('speaking'), video: !t.el.classList.contains('no-video') })),
  stats: () => (app.call ? app.call.stats() : Promise.resolve(null)),
  roomKind: () => app.roomKind,
  /** The shared room's received mix (a MediaStream), for measuring what one hears. */
  mixStream: () => $('mix').srcObject,
  avatars: () => (app.map ? app.map.avatars() : []),
  /** Put one's own avatar at (x, z) metres: what dragging it there does. */
  place: (x, z) => app.map && app.map.placeAt(x, z),
  devicesChecked: () => Boolean(app.devicesChecked),
  /** The pre-call check's relays that answered (`udp`, `tcp`, `tls`); null: none to ask. */
  relayWays: () => app.network.ways,
  /** The way the call connected: `udp`, `tcp`, `relay-udp`, `relay-tcp`, `relay-tls`. */
  way: () => app.network.way,
  language: () => i18n.language(),
  chatLines: () => (app.chat ? app.chat.lines() : []),
  /** Whether the page's session has a WebSocket open (a change of language keeps it). */
  connected: () => Boolean(app.session && app.session.ws && app.session.ws.readyState === WebSocket.OPEN),
  /** The session's WebSocket (compared, not read: a change of language keeps the same one). */
  connection: () => (app.session ? app.session.ws : null),
};

/** The language changed: everything the page says, said again in it. */
function rerender() {
  if (app.said.status) $('status').textContent = t(...app.said.status);
  else if (app.said.news) $('status').textContent = app.said.news();
  renderProblems();
  renderLobby();
  renderWarning();
  renderEnded();
  host.render();
  if (app.said.quality) setQuality(...app.said.quality);
  app.network.render();
  if (app.view === 'call') updateButtons();
  for (const p of app.tiles.keys()) renderTile(p);
  if (app.chat) app.chat.render();
  if (app.map) app.map.draw();
}

// "It starts in 5 minutes" stays true while the patient waits.
setInterval(() => app.view === 'lobby' && renderLobby(), 30000);

i18n.init().then(() => {
  i18n.picker($('language'));
  i18n.onChange(rerender);
  rerender();
  setQuality('', 'quality.measuring');
  start();
});
