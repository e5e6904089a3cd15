// The reference web client: join from a link (or, in dev mode, a demo picker), check devices,
// wait in the lobby, hold the consultation. It speaks only the public session protocol
// (signaling/PROTOCOL.md). No names are shown anywhere: people are FHIR references and
// appear by role.
// In a shared room (`room_kind` "shared") the call also shows the room from above
// (room.js) and plays the SFU's stereo mix instead of everyone's own audio.

import { Session } from './session.js';
import { Call, levelMeter, openCamera, openDevices } from './media.js';
import { RoomMap } from './room.js';

const $ = (id) => document.getElementById(id);
const ROLE = { host: 'Clinician', patient: 'Patient', interpreter: 'Interpreter', companion: 'Companion' };

const ENDED = {
  host_ended: 'Your clinician ended the consultation.',
  time_over: 'The appointment time is over.',
  cancelled: 'The appointment was cancelled.',
  denied_by_host: 'Your clinician did not let you in. Contact the clinic if you think this is a mistake.',
  removed: 'You were removed from the consultation.',
  replaced: 'You joined from another window or device, so this one has stopped.',
  left: 'You left the consultation.',
};

const REFUSED = {
  token_expired: 'Your link has expired. Ask the clinic for a new one.',
  too_early: 'This appointment has not opened yet. Try again closer to its start time.',
  too_late: 'This appointment is over.',
  not_a_participant: 'You are not on this appointment.',
  appointment_not_found: 'This appointment could not be found.',
  appointment_status: 'This appointment is not active (it may have been cancelled or moved).',
  consultation_ended: 'This consultation has already ended.',
  removed_by_host: 'You were removed from this consultation and cannot rejoin it.',
  invite_invalid: 'The interpreter invite is not valid (it may have been used or have expired).',
  participant_declined: 'You declined this appointment.',
};

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
};

/** The stream id of the shared room's mix (PROTOCOL.md, Shared rooms). */
const MIX = 'spatial-mix';

function show(view) {
  app.view = view;
  for (const id of ['start', 'precall', 'lobby', 'call', 'ended']) $(id).hidden = id !== view;
  const heading = document.querySelector(`#${view} h2`);
  if (heading) { heading.tabIndex = -1; heading.focus({ preventScroll: true }); }
}

function announce(text) {
  $('status').textContent = text;
}

function roleLabel(role) {
  return ROLE[role] || 'Participant';
}

function button(text, onClick, className = 'secondary') {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.className = className;
  b.addEventListener('click', onClick);
  return b;
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
    $('ended-title').textContent = 'Open your appointment link';
    $('ended-reason').textContent = 'Use the link the clinic sent you for your appointment.';
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
  announce('Development mode');
  $('start-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const r = await fetch('/dev/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ fhir_user: form.get('who') }) });
    if (!r.ok) return announce('Could not get a demo token.');
    const appt = form.get('appointment').trim();
    const code = form.get('invite').trim() || undefined;
    history.replaceState(null, '', `/?appointment=${encodeURIComponent(appt)}${code ? `&invite=${encodeURIComponent(code)}` : ''}`);
    precall({ appointment: appt, token: (await r.json()).token, invite: code });
  });
}

// ---- Pre-call check ---------------------------------------------------------------------

async function precall(link) {
  show('precall');
  announce('Checking your camera and microphone…');
  let stopMeter = () => {};
  const check = async () => {
    stopMeter();
    app.local.getTracks().forEach((t) => t.stop());
    const { stream, problems } = await openDevices(true);
    app.local = stream;
    $('preview').srcObject = stream;
    $('no-camera').hidden = stream.getVideoTracks().length > 0;
    $('device-message').hidden = problems.length === 0;
    $('device-message').textContent = problems.join(' ');
    stopMeter = levelMeter(stream, $('level'));
    announce(problems.length ? 'Some devices are not available.' : 'Camera and microphone are ready.');
  };
  await check();
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
      if (state === 'connecting') announce('Connecting…');
      if (state === 'reconnecting') {
        closeCall();
        announce(`Connection lost: reconnecting${attempt > 1 ? ` (attempt ${attempt})` : ''}…`);
        setQuality('reconnecting', 'Connection: reconnecting…');
      }
    },
  });
  app.session.open();
}

function finish(reason, text) {
  app.endedReason = reason;
  app.session.stop(reason === 'left');
  closeCall();
  app.local.getTracks().forEach((t) => t.stop());
  $('ended-reason').textContent = text || ENDED[reason] || `The consultation ended (${reason}).`;
  show('ended');
  announce('The consultation has ended.');
}

function onMessage(m) {
  switch (m.type) {
    case 'lobby':
      closeCall();
      app.role = m.role;
      app.me = m.participant;
      $('lobby-role').textContent = roleLabel(m.role).toLowerCase();
      show('lobby');
      return announce('In the waiting room. Your clinician will let you in.');
    case 'returned_to_lobby':
      closeCall();
      show('lobby');
      return announce('Your clinician moved you back to the waiting room.');
    case 'joined':
      app.role = m.role;
      app.me = m.participant;
      app.closesAt = m.closes_at;
      app.roomKind = m.room_kind || 'consultation';
      return enterCall(m.members);
    case 'members_changed':
      return setMembers(m.members);
    case 'lobby_changed':
      return setWaiting(m.waiting);
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
      return announce(`Your clinician ${m.muted ? 'muted' : 'unmuted'} your ${m.kind === 'audio' ? 'microphone' : 'camera'}.`);
    case 'active_speaker':
      app.speaker = m.participant;
      for (const p of app.tiles.keys()) renderTile(p);
      return;
    case 'quality':
      app.quality = m;
      return;
    case 'warning':
      $('warning').hidden = false;
      $('warning').textContent = `The appointment ends at ${time(m.closes_at)}.`;
      return announce($('warning').textContent);
    case 'extended':
      app.closesAt = m.closes_at;
      $('warning').hidden = true;
      return announce(`Extended: the consultation now ends at ${time(m.closes_at)}.`);
    case 'invite': {
      const url = `${location.origin}/?appointment=${encodeURIComponent(app.session.appointment)}&invite=${encodeURIComponent(m.code)}`;
      $('invite-code').hidden = false;
      $('invite-code').textContent = `Interpreter invite code ${m.code} (until ${time(m.expires_at)}): ${url}`;
      return;
    }
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
    if (app.session.stopped) return finish(m.code, REFUSED[m.code] || `You could not join this consultation (${m.code}).`);
    return announce('The service is busy: trying again…');
  }
  console.warn('server error', m.code, m.message);
  announce(`That did not work (${m.code.replaceAll('_', ' ')}).`);
}

function time(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

// ---- The call ---------------------------------------------------------------------------

function enterCall(members) {
  closeCall();
  show('call');
  $('host').hidden = app.role !== 'host';
  const shared = app.roomKind === 'shared';
  $('room').hidden = !shared;
  announce(`In the ${shared ? 'shared room' : 'consultation'} as ${roleLabel(app.role).toLowerCase()}, until ${time(app.closesAt)}.`);
  app.call = new Call({
    send: (msg) => app.session.send(msg),
    onTrack: addTrack,
    onTrackRemoved: removeTrack,
    onConnection: onConnection,
    shared,
    onChannelOpen: () => app.map && app.map.flush(),
    onChannelMessage: (data) => app.map && app.map.onMessage(data),
  });
  if (shared) {
    const call = app.call;
    roomMap().enter(app.me, (buffer) => call === app.call && call.sendPose(buffer));
  }
  app.call.start(app.local);
  setMembers(members);
  updateButtons();
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
    });
  }
  return app.map;
}

function closeCall() {
  app.members = [];
  $('mix').srcObject = null;
  if (!app.call) return;
  app.call.close();
  app.call = null;
  clearTimeout(app.iceTimer);
  for (const [p, t] of app.tiles) {
    if (p !== app.me) t.stream.getTracks().forEach((tr) => t.stream.removeTrack(tr));
    renderTile(p);
  }
}

function onConnection(state) {
  clearTimeout(app.iceTimer);
  if (state === 'failed') return app.session.reconnect();
  if (state === 'disconnected') {
    setQuality('poor', 'Connection: unstable…');
    app.iceTimer = setTimeout(() => app.call && app.call.pc.connectionState !== 'connected' && app.session.reconnect(), 8000);
  }
}

function setMembers(members) {
  const before = new Set(app.members.map((m) => m.participant));
  const now = new Set(members.map((m) => m.participant));
  const came = members.filter((m) => !before.has(m.participant) && m.participant !== app.me);
  const went = app.members.filter((m) => !now.has(m.participant));
  const news = [...came.map((m) => `${roleLabel(m.role)} joined.`), ...went.map((m) => `${roleLabel(m.role)} left.`)];
  if (before.size && news.length) announce(news.join(' '));
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
  const role = Object.assign(document.createElement('span'), { textContent: roleLabel(t.role) });
  if (t.role === 'interpreter') role.className = 'badge';
  t.label.replaceChildren(self ? 'You: ' : '', role, silent ? ' (muted)' : '', speaking ? ' · speaking' : '');
  t.el.setAttribute('aria-label', t.label.textContent);
  t.controls.replaceChildren();
  if (app.role === 'host' && !self) {
    const name = roleLabel(t.role).toLowerCase();
    const mute = button(muted.audio ? 'Unmute' : 'Mute', () => app.session.send({ type: 'mute', participant, kind: 'audio', muted: !muted.audio }));
    mute.dataset.action = 'mute';
    mute.setAttribute('aria-label', `${muted.audio ? 'Unmute' : 'Mute'} the ${name}`);
    const back = button('To waiting room', () => app.session.send({ type: 'return_to_lobby', participant }));
    back.setAttribute('aria-label', `Send the ${name} back to the waiting room`);
    const remove = button('Remove', () => {}, 'danger');
    confirmStep(remove, 'Confirm removal', () => app.session.send({ type: 'remove', participant }));
    remove.setAttribute('aria-label', `Remove the ${name}`);
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

function setWaiting(waiting) {
  const list = $('waiting');
  list.replaceChildren();
  if (!waiting.length) {
    list.append(Object.assign(document.createElement('li'), { textContent: 'Nobody is waiting.' }));
  }
  for (const w of waiting) {
    const li = document.createElement('li');
    const name = roleLabel(w.role);
    li.append(Object.assign(document.createElement('span'), { textContent: `${name} is waiting` }));
    const admit = button('Let in', () => app.session.send({ type: 'admit', participant: w.participant }), '');
    admit.dataset.action = 'admit';
    admit.dataset.participant = w.participant;
    admit.setAttribute('aria-label', `Let the ${name.toLowerCase()} in`);
    const deny = button('Deny', () => app.session.send({ type: 'deny', participant: w.participant }));
    deny.setAttribute('aria-label', `Turn the ${name.toLowerCase()} away`);
    li.append(admit, deny);
    list.append(li);
  }
  if (waiting.length) announce(`${waiting.map((w) => roleLabel(w.role)).join(', ')} waiting to be let in.`);
}

// ---- Controls ---------------------------------------------------------------------------

/** A second press within five seconds confirms (no modal dialogs: they trap screen readers and tests alike). */
function confirmStep(b, armedText, action) {
  const text = b.textContent;
  b.addEventListener('click', () => {
    if (b.dataset.armed) {
      delete b.dataset.armed;
      b.textContent = text;
      return action();
    }
    b.dataset.armed = 'yes';
    b.textContent = armedText;
    announce(`Press "${armedText}" again to confirm.`);
    setTimeout(() => { delete b.dataset.armed; b.textContent = text; }, 5000);
  });
}

function micOn() {
  return app.local.getAudioTracks().some((t) => t.enabled);
}

function updateButtons() {
  const mic = app.local.getAudioTracks()[0];
  $('mic').disabled = !mic;
  $('mic').textContent = mic && !mic.enabled ? 'Unmute' : 'Mute';
  $('mic').setAttribute('aria-pressed', String(Boolean(mic && !mic.enabled)));
  const cam = app.local.getVideoTracks().length > 0;
  $('camera').textContent = cam ? 'Camera off' : 'Camera on';
  $('camera').setAttribute('aria-pressed', String(!cam));
  renderTile(app.me);
}

$('mic').addEventListener('click', () => {
  app.local.getAudioTracks().forEach((t) => { t.enabled = !t.enabled; });
  updateButtons();
  announce(micOn() ? 'Microphone on.' : 'Microphone muted.');
});

$('camera').addEventListener('click', async () => {
  const [current] = app.local.getVideoTracks();
  if (current) {
    current.stop();
    app.local.removeTrack(current);
    if (app.call) app.call.setCamera(null);
    announce('Camera off.');
  } else {
    try {
      const track = await openCamera();
      app.local.addTrack(track);
      if (app.call) app.call.setCamera(track);
      announce('Camera on.');
    } catch (e) {
      announce(`The camera could not be started (${e.name}).`);
    }
  }
  tile(app.me, app.role).video.srcObject = app.local;
  updateButtons();
});

$('leave').addEventListener('click', () => finish('left'));
$('leave-lobby').addEventListener('click', () => finish('left'));
confirmStep($('end'), 'Confirm: end for everyone', () => app.session.send({ type: 'end' }));
$('extend').addEventListener('click', () => app.session.send({ type: 'extend', minutes: 10 }));
$('invite').addEventListener('click', () => app.session.send({ type: 'invite_interpreter' }));

// ---- Connection quality: the SFU's view of our link, and our own getStats -------------

function setQuality(level, text, detail = '') {
  const q = $('quality');
  q.className = `quality ${level}`;
  if (q.textContent !== text) q.textContent = text;
  q.title = detail;
}

setInterval(async () => {
  if (!app.call || app.view !== 'call') return;
  const s = await app.call.stats();
  if (s.state !== 'connected') return setQuality('fair', `Connection: ${s.state === 'new' || s.state === 'connecting' ? 'connecting…' : s.state}`);
  const q = app.quality || {};
  const rtt = q.rtt_ms ?? s.rttMs;
  const loss = Math.max(q.loss_up_pct || 0, q.loss_down_pct || 0);
  const level = loss < 2 && (rtt == null || rtt < 250) ? 'good' : loss < 10 && rtt < 500 ? 'fair' : 'poor';
  const parts = [rtt != null && `round trip ${Math.round(rtt)} ms`, `loss ${loss.toFixed(1)} %`,
    q.jitter_ms != null && `jitter ${Math.round(q.jitter_ms)} ms`,
    q.kbps_up != null && `${Math.round(q.kbps_up)} kbit/s up, ${Math.round(q.kbps_down)} kbit/s down`].filter(Boolean);
  setQuality(level, `Connection: ${level}`, parts.join(', '));
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
};

start();
