// Which way the call reaches the clinic. Before the call: which of the clinic's TURN relays
// this network lets us reach, and over what (the access check's `ice_servers`, PROTOCOL.md
// "ICE servers"). In the call: the way the connection actually took (the selected candidate
// pair). A hotel or hospital network that blocks UDP and every port but 443 still gets
// through the relay over TLS; the page says so instead of leaving the patient guessing.

/** How a relay is reached, best first: the order the page names them in. */
const RELAY_WAYS = ['udp', 'tcp', 'tls'];

/** The link asks for relay only (`?relay=1`): a test link for locked-down networks. */
export function relayOnly(search = location.search) {
  return new URLSearchParams(search).get('relay') === '1';
}

/** The RTCPeerConnection configuration for these ICE servers. */
export function rtcConfig(iceServers, relay) {
  return {
    iceServers: Array.isArray(iceServers) ? iceServers : [],
    iceTransportPolicy: relay ? 'relay' : 'all',
    bundlePolicy: 'max-bundle',
  };
}

/** The servers' URLs that are TURN (not STUN). */
function hasTurn(iceServers) {
  return (iceServers || []).some((s) => [].concat(s.urls || []).some((u) => /^turns?:/i.test(u)));
}

/**
 * How a relay candidate reaches its server: `relayProtocol` where the browser gives it,
 * else read from the server's URL (`turns:` is TLS, `?transport=tcp` TCP).
 */
function relayWay(candidate, url) {
  const given = candidate && candidate.relayProtocol;
  if (RELAY_WAYS.includes(given)) return given;
  if (/^turns:/i.test(url || '')) return 'tls';
  if (/transport=tcp/i.test(url || '')) return 'tcp';
  return 'udp';
}

/**
 * Ask the TURN servers for relay candidates (at most `ms`): the ways (`udp`, `tcp`, `tls`)
 * that answered, best first; `null` when there is no TURN server to ask. The pre-call
 * credentials can allocate but never relay, so nothing but the check itself goes out.
 */
export async function relayWays(iceServers, ms = 8000) {
  if (!window.RTCPeerConnection || !hasTurn(iceServers)) return null;
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
  const ways = new Set();
  try {
    pc.createDataChannel('check');
    const done = new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      pc.onicecandidate = (e) => {
        if (e.candidate && e.candidate.type === 'relay') ways.add(relayWay(e.candidate, e.url));
        if (!e.candidate) {
          clearTimeout(timer);
          resolve();
        }
      };
    });
    await pc.setLocalDescription(await pc.createOffer());
    await done;
  } catch (e) {
    console.warn('relay check failed', e && e.name);
  } finally {
    pc.close();
  }
  return RELAY_WAYS.filter((w) => ways.has(w));
}

/**
 * The way a connected peer connection took: `udp` or `tcp` (direct to the media node),
 * or `relay-udp`, `relay-tcp`, `relay-tls` (through a TURN server); null before it connects.
 */
export async function connectedWay(pc) {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId) || pair;
  });
  if (!pair) {
    stats.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
    });
  }
  const local = pair && stats.get(pair.localCandidateId);
  if (!local) return null;
  if (local.candidateType === 'relay') return `relay-${relayWay(local, local.url)}`;
  return local.protocol === 'tcp' ? 'tcp' : 'udp';
}

/**
 * The page's two network lines: the pre-call check's (which relays answered) and the call's
 * (which way it connected). Each is said again in a new language by `render`.
 */
export class NetworkStatus {
  constructor({ precall, call, words }) {
    this.precallLine = precall;
    this.callLine = call;
    this.words = words;
    this.ways = undefined; // the relays' ways once checked (null: no relay to check)
    this.way = null; // the call's way once connected
  }

  /** Ask signaling for the pre-call ICE servers (the access check), then try the relays. */
  async check(appointment, token) {
    this.ways = undefined;
    this.render();
    let servers = null;
    try {
      const r = await fetch(`/v1/appointments/${encodeURIComponent(appointment)}/access`, {
        headers: { authorization: `Bearer ${token}` },
      });
      if (r.ok) servers = (await r.json()).ice_servers;
    } catch {
      // Offline or refused: the join says why; the line just stays away.
    }
    this.ways = await relayWays(servers);
    this.render();
    return this.ways;
  }

  /** Read the call's way from its peer connection (after it connects, and now and then). */
  async update(pc) {
    const way = pc ? await connectedWay(pc).catch(() => null) : null;
    if (way !== this.way) {
      this.way = way;
      this.render();
    }
    return way;
  }

  render() {
    const { t, list } = this.words;
    const wayName = (w) => t(`network.way.${w}`);
    if (this.precallLine) {
      const line = this.precallLine;
      line.hidden = this.ways === null;
      if (this.ways === undefined) line.textContent = t('network.checking');
      else if (this.ways && this.ways.length) line.textContent = t('network.relay', { ways: list(this.ways.map(wayName)) });
      else if (this.ways) line.textContent = t('network.no_relay');
    }
    if (this.callLine) {
      const w = this.way;
      this.callLine.hidden = !w;
      if (w) {
        this.callLine.textContent = w.startsWith('relay-')
          ? t('network.path.relay', { way: wayName(w.slice('relay-'.length)) })
          : t(`network.path.${w}`);
      }
    }
  }
}
