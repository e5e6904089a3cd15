// Camera, microphone and the one peer connection to the SFU. Nothing here touches the page
// layout: app.js decides what to show.

import { rtcConfig } from './network.js';

const VIDEO = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24 } };

/**
 * Why getUserMedia failed, as a catalogue key (`device.<reason>.<what>`, i18n/*.json) and
 * the error's name: app.js says it in the patient's language.
 */
function explain(error, what) {
  const name = (error && error.name) || 'Error';
  switch (name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return { key: `device.denied.${what}`, error: name };
    case 'NotFoundError':
    case 'OverconstrainedError':
      return { key: `device.missing.${what}`, error: name };
    case 'NotReadableError':
    case 'AbortError':
      return { key: `device.busy.${what}`, error: name };
    default:
      return { key: `device.failed.${what}`, error: name };
  }
}

/**
 * Open the microphone and (if `video`) the camera. Whatever works is returned, with what
 * did not as `problems` ({ key, error }): one missing device never blocks joining.
 */
export async function openDevices(video) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return { stream: new MediaStream(), problems: [{ key: 'device.insecure', error: '' }] };
  }
  const problems = [];
  const get = (constraints) => navigator.mediaDevices.getUserMedia(constraints);
  let audio = null;
  let camera = null;
  try {
    const both = await get({ audio: true, video: video ? VIDEO : false });
    [audio] = both.getAudioTracks();
    [camera] = both.getVideoTracks();
  } catch (first) {
    try {
      [audio] = (await get({ audio: true })).getAudioTracks();
    } catch (e) {
      problems.push(explain(e, 'microphone'));
    }
    if (video) {
      try {
        [camera] = (await get({ video: VIDEO })).getVideoTracks();
      } catch (e) {
        problems.push(explain(e, 'camera'));
      }
    }
    if (!problems.length) problems.push(explain(first, video ? 'both' : 'microphone'));
  }
  return { stream: new MediaStream([audio, camera].filter(Boolean)), problems };
}

export async function openCamera() {
  const s = await navigator.mediaDevices.getUserMedia({ video: VIDEO });
  return s.getVideoTracks()[0];
}

/** Drive a <meter> from the microphone's level (Web Audio); returns a stop function. */
export function levelMeter(stream, meter) {
  const [track] = stream.getAudioTracks();
  if (!track || !window.AudioContext) return () => {};
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    meter.value = Math.min(1, Math.sqrt(sum / samples.length) * 4);
  }, 100);
  ctx.resume().catch(() => {});
  return () => { clearInterval(timer); ctx.close().catch(() => {}); };
}

/**
 * One RTCPeerConnection to the SFU. The client offers what it publishes; the SFU offers the
 * others' tracks and we answer. We are the polite side: an offer from the SFU while ours is
 * outstanding wins (we roll back), and after a `glare` error we offer again once the SFU's
 * offer is answered. Each offer we send gets exactly one reply (an answer or an error), in
 * order, so `outstanding` tells which reply belongs to the offer we still hold.
 */
export class Call {
  /**
   * `shared`: a shared room (sfu/src/spatial/FORMAT.md): a data channel carries poses both
   * ways (`onChannelOpen`, `onChannelMessage(data)`), and the one audio track received is
   * the SFU's stereo mix.
   */
  constructor({ send, onTrack, onTrackRemoved, onConnection, shared = false, onChannelOpen = () => {}, onChannelMessage = () => {}, onVital = () => {}, iceServers = [], relay = false }) {
    this.onVital = onVital;
    this.send = send;
    this.onTrack = onTrack;
    this.onConnection = onConnection;
    this.shared = shared;
    this.onChannelOpen = onChannelOpen;
    this.onChannelMessage = onChannelMessage;
    // `iceServers` from `joined` (the node's TURN, the operator's); `relay`: TURN only.
    this.pc = new RTCPeerConnection(rtcConfig(iceServers, relay));
    this.chain = Promise.resolve();
    this.wantOffer = false;
    this.outstanding = 0;
    this.owners = new Map(); // received track id -> participant
    this.pc.ontrack = (e) => {
      const participant = e.streams[0] ? e.streams[0].id : 'unknown';
      this.owners.set(e.track.id, participant);
      this.onTrack(participant, e.track);
      // The SFU's offer ends a track by making its transceiver inactive.
      if (e.streams[0]) e.streams[0].onremovetrack = (r) => onTrackRemoved(participant, r.track.id);
    };
    this.pc.onconnectionstatechange = () => this.onConnection(this.pc.connectionState);
    this.pc.onicecandidate = (e) => {
      // The SFU is ICE-lite and its answer carries its own candidates; ours are trickled
      // only once our description has gone out (earlier ones are in the SDP).
      if (e.candidate && e.candidate.candidate && this.described) {
        this.send({ type: 'ice', candidate: e.candidate.toJSON() });
      }
    };
  }

  /** Publish these tracks and make the first offer. */
  start(stream) {
    for (const t of stream.getTracks()) this.pc.addTrack(t, stream);
    if (this.shared) {
      // Only the latest pose matters: unordered, never resent.
      this.channel = this.pc.createDataChannel('poses', { ordered: false, maxRetransmits: 0 });
      this.channel.binaryType = 'arraybuffer';
      this.channel.onopen = () => this.onChannelOpen();
      this.channel.onmessage = (e) => this.onChannelMessage(e.data);
    } else {
      // A consultation's vitals (PROTOCOL.md, "Vitals"): the patient's readings go out, a
      // clinician's come in. It is also the negotiated section that carries ICE and DTLS
      // when we publish nothing.
      this.vitals = this.pc.createDataChannel('vitals');
      this.vitals.onmessage = (e) => {
        try {
          this.onVital(JSON.parse(e.data));
        } catch {
          // not a reading: ignored
        }
      };
    }
    this.stream = stream;
    this.negotiate();
  }

  serial(step) {
    this.chain = this.chain.then(step).catch((e) => console.warn('negotiation:', e));
    return this.chain;
  }

  negotiate() {
    this.wantOffer = true;
    this.serial(() => this.maybeOffer());
  }

  async maybeOffer() {
    if (!this.wantOffer || this.pc.signalingState !== 'stable' || this.closed) return;
    this.wantOffer = false;
    await this.pc.setLocalDescription(this.local(await this.pc.createOffer()));
    await this.gathered();
    this.outstanding += 1;
    this.sendDescription();
  }

  /**
   * Our description as we send it. In a shared room it asks for stereo Opus: Chromium
   * decodes the SFU's binaural mix in stereo only when its own description says `stereo=1`
   * (it does not take that from the SFU's offer): without it both ears measure the same
   * downmix (tests/web_shared_room.rs).
   */
  local(description) {
    if (!this.shared) return description;
    return { type: description.type, sdp: withStereoOpus(description.sdp) };
  }

  /** Send a pose on the shared room's channel; false if it is not open (yet). */
  sendPose(buffer) {
    if (!this.channel || this.channel.readyState !== 'open') return false;
    this.channel.send(buffer);
    return true;
  }

  /** Send a vitals reading; false if the channel is not open (yet). */
  sendVital(reading) {
    if (!this.vitals || this.vitals.readyState !== 'open') return false;
    this.vitals.send(JSON.stringify(reading));
    return true;
  }

  /** Wait briefly for host candidates, so the first description carries them. */
  gathered() {
    if (this.pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((done) => {
      const check = () => this.pc.iceGatheringState === 'complete' && done();
      this.pc.addEventListener('icegatheringstatechange', check);
      setTimeout(done, 1000);
    });
  }

  sendDescription() {
    const { type, sdp } = this.pc.localDescription;
    this.send({ type: 'sdp', description: { type, sdp } });
    this.described = true;
  }

  onSdp(description) {
    return this.serial(async () => {
      if (this.closed) return;
      if (description.type === 'answer') {
        this.outstanding = Math.max(0, this.outstanding - 1);
        if (this.outstanding === 0 && this.pc.signalingState === 'have-local-offer') {
          await this.pc.setRemoteDescription(description);
        }
      } else {
        if (this.pc.signalingState !== 'stable') {
          await this.pc.setLocalDescription({ type: 'rollback' });
          this.wantOffer = true;
        }
        await this.pc.setRemoteDescription(description);
        await this.pc.setLocalDescription(this.local(await this.pc.createAnswer()));
        this.sendDescription();
      }
      await this.maybeOffer();
    });
  }

  /** Our offer met an unanswered offer of the SFU's (or was refused): offer again later. */
  onOfferRefused(code) {
    return this.serial(async () => {
      this.outstanding = Math.max(0, this.outstanding - 1);
      if (this.outstanding === 0 && this.pc.signalingState === 'have-local-offer') {
        await this.pc.setLocalDescription({ type: 'rollback' });
      }
      if (code !== 'glare') return;
      this.wantOffer = true;
      // The SFU's offer normally arrives first and triggers the new offer; just in case.
      setTimeout(() => this.serial(() => this.maybeOffer()), 1500);
    });
  }

  /** Camera off (`null`) or on (a new track): renegotiates. */
  setCamera(track) {
    const sender = this.pc.getSenders().find((s) => s.track && s.track.kind === 'video');
    if (sender) {
      sender.track.stop();
      this.pc.removeTrack(sender);
    }
    if (track) this.pc.addTrack(track, this.stream);
    this.negotiate();
  }

  /** Inbound and outbound RTP and the selected candidate pair, for the test hook and the indicator. */
  async stats() {
    const inbound = [];
    let rttMs = null;
    let sent = 0;
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp') {
        inbound.push({
          kind: s.kind,
          participant: this.owners.get(s.trackIdentifier) || null,
          packets: s.packetsReceived || 0,
          lost: s.packetsLost || 0,
          framesDecoded: s.framesDecoded || 0,
        });
      } else if (s.type === 'outbound-rtp') {
        sent += s.packetsSent || 0;
      } else if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && s.currentRoundTripTime != null) {
        rttMs = s.currentRoundTripTime * 1000;
      }
    });
    return { state: this.pc.connectionState, inbound, sentPackets: sent, rttMs };
  }

  close() {
    this.closed = true;
    this.pc.close();
  }
}

/** `sdp` with `stereo=1` in the fmtp of every Opus payload type (added where missing). */
export function withStereoOpus(sdp) {
  const opus = new Set([...sdp.matchAll(/^a=rtpmap:(\d+) opus\/48000\/2\r?$/gim)].map((m) => m[1]));
  if (!opus.size) return sdp;
  const lines = sdp.split('\r\n');
  const out = [];
  for (const line of lines) {
    const fmtp = /^a=fmtp:(\d+) (.*)$/.exec(line);
    if (fmtp && opus.has(fmtp[1])) {
      const params = fmtp[2].split(';').map((p) => p.trim()).filter((p) => p && !/^stereo=/.test(p));
      out.push(`a=fmtp:${fmtp[1]} ${[...params, 'stereo=1'].join(';')}`);
      continue;
    }
    out.push(line);
    const rtpmap = /^a=rtpmap:(\d+) opus\/48000\/2$/i.exec(line);
    if (rtpmap && !lines.some((l) => l.startsWith(`a=fmtp:${rtpmap[1]} `))) out.push(`a=fmtp:${rtpmap[1]} stereo=1`);
  }
  return out.join('\r\n');
}
