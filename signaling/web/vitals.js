// Vitals beside the call (PROTOCOL.md, "Vitals"): the patient's page reads a Bluetooth
// health device where the browser can (Web Bluetooth: heart rate, pulse oximeter, blood
// pressure GATT services) or takes a reading typed in, and sends each reading on the
// consultation's `vitals` data channel; a clinician's page shows the latest value of each
// kind with a small trend. Readings are never written to the console or stored.

/** Plausible ranges, as the SFU checks them (sfu/src/vitals.rs). */
const RANGES = { hr: [[20, 300]], spo2: [[50, 100]], bp: [[40, 300], [20, 200]] };
/** Readings kept per kind for the trend. */
const TREND = 30;

// GATT services and characteristics (Bluetooth SIG assigned numbers).
const HEART_RATE = 0x180d;
const HEART_RATE_MEASUREMENT = 0x2a37;
const PULSE_OXIMETER = 0x1822;
const PLX_CONTINUOUS = 0x2a5f;
const PLX_SPOT_CHECK = 0x2a5e;
const BLOOD_PRESSURE = 0x1810;
const BLOOD_PRESSURE_MEASUREMENT = 0x2a35;

/** An IEEE 11073 16-bit SFLOAT (4-bit exponent, 12-bit mantissa); NaN for reserved values. */
export function sfloat(raw) {
  let mantissa = raw & 0x0fff;
  let exponent = raw >> 12;
  if (mantissa >= 0x07fe && mantissa <= 0x0802) return NaN;
  if (mantissa >= 0x0800) mantissa -= 0x1000;
  if (exponent >= 0x8) exponent -= 0x10;
  return mantissa * Math.pow(10, exponent);
}

/** Heart Rate Measurement (0x2A37): flags bit 0 says 8- or 16-bit beats per minute. */
export function parseHeartRate(view) {
  const wide = view.getUint8(0) & 0x01;
  return wide ? view.getUint16(1, true) : view.getUint8(1);
}

/** PLX measurement (0x2A5E/0x2A5F): SpO2 then pulse rate, each an SFLOAT after the flags. */
export function parsePulseOximeter(view) {
  return { spo2: sfloat(view.getUint16(1, true)), pulse: sfloat(view.getUint16(3, true)) };
}

/** Blood Pressure Measurement (0x2A35): systolic, diastolic, mean; flags bit 0 set is kPa. */
export function parseBloodPressure(view) {
  const kpa = view.getUint8(0) & 0x01;
  const unit = kpa ? 7.50062 : 1;
  return {
    systolic: Math.round(sfloat(view.getUint16(1, true)) * unit),
    diastolic: Math.round(sfloat(view.getUint16(3, true)) * unit),
  };
}

/** A reading in the protocol's compact form, or null when outside the plausible range. */
export function reading(kind, values, src) {
  const ranges = RANGES[kind];
  if (!ranges || values.length !== ranges.length) return null;
  const ok = values.every((v, i) => Number.isFinite(v) && v >= ranges[i][0] && v <= ranges[i][1]);
  if (!ok || (kind === 'bp' && values[0] <= values[1])) return null;
  return { k: kind, v: values.map((v) => Math.round(v * 10) / 10), t: Date.now(), src };
}

/**
 * An element; `words: [t, key]` gives it the catalogue text of `key` and marks it
 * (`data-i18n`) so a change of language says it again (i18n.translatePage).
 */
function element(tag, attributes = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attributes)) {
    if (k === 'words') {
      const [t, key] = v;
      e.dataset.i18n = key;
      e.textContent = t(key);
    } else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

/**
 * The patient's side: a form for a typed reading and a button that connects a Bluetooth
 * device. `send(reading)` returns false when the channel is not open.
 */
export class VitalsEntry {
  constructor({ root, t, send }) {
    this.t = t;
    this.send = send;
    this.status = element('p', { class: 'vitals-status', role: 'status', 'aria-live': 'polite' });
    const kind = element('select', { id: 'vitals-kind', name: 'kind' });
    for (const k of ['hr', 'spo2', 'bp']) kind.append(element('option', { value: k, words: [t, `vitals.kind.${k}`] }));
    const first = element('input', { id: 'vitals-value', name: 'value', type: 'number', inputmode: 'decimal', required: '' });
    const second = element('input', { id: 'vitals-value2', name: 'value2', type: 'number', inputmode: 'decimal', hidden: '' });
    const secondLabel = element('label', { for: 'vitals-value2', hidden: '', words: [t, 'vitals.diastolic'] });
    const firstLabel = element('label', { for: 'vitals-value', words: [t, 'vitals.value'] });
    kind.onchange = () => {
      const bp = kind.value === 'bp';
      second.hidden = secondLabel.hidden = !bp;
      second.required = bp;
      firstLabel.dataset.i18n = bp ? 'vitals.systolic' : 'vitals.value';
      firstLabel.textContent = t(firstLabel.dataset.i18n);
    };
    const form = element('form', { id: 'vitals-form', 'aria-labelledby': 'vitals-entry-title' }, [
      element('h3', { id: 'vitals-entry-title', words: [t, 'vitals.enter_title'] }),
      element('label', { for: 'vitals-kind', words: [t, 'vitals.kind_label'] }), kind,
      firstLabel, first, secondLabel, second,
      element('button', { type: 'submit', words: [t, 'vitals.send'] }),
    ]);
    form.onsubmit = (e) => {
      e.preventDefault();
      const values = [Number(first.value)];
      if (kind.value === 'bp') values.push(Number(second.value));
      const r = reading(kind.value, values, 'manual');
      if (!r) return this.say('vitals.implausible');
      this.say(this.send(r) ? 'vitals.sent' : 'vitals.not_connected');
      if (this.sent) form.reset();
    };
    root.append(form);
    if (navigator.bluetooth) {
      const connect = element('button', { type: 'button', id: 'vitals-bluetooth', words: [t, 'vitals.connect_device'] });
      connect.onclick = () => this.connectDevice().catch(() => this.say('vitals.device_failed'));
      root.append(connect);
    }
    root.append(this.status);
  }

  say(key) {
    this.sent = key === 'vitals.sent';
    this.status.dataset.i18n = key;
    this.status.textContent = this.t(key);
  }

  /** Ask the browser for a health device and send what it measures. */
  async connectDevice() {
    const device = await navigator.bluetooth.requestDevice({
      filters: [{ services: [HEART_RATE] }, { services: [PULSE_OXIMETER] }, { services: [BLOOD_PRESSURE] }],
    });
    const server = await device.gatt.connect();
    const listen = async (service, characteristic, onValue) => {
      try {
        const c = await (await server.getPrimaryService(service)).getCharacteristic(characteristic);
        c.addEventListener('characteristicvaluechanged', (e) => onValue(e.target.value));
        await c.startNotifications();
        return true;
      } catch {
        return false; // the device does not offer this measurement
      }
    };
    const ble = (kind, values) => {
      const r = reading(kind, values, 'ble');
      if (r) this.send(r);
    };
    const found = await Promise.all([
      listen(HEART_RATE, HEART_RATE_MEASUREMENT, (v) => ble('hr', [parseHeartRate(v)])),
      listen(PULSE_OXIMETER, PLX_CONTINUOUS, (v) => ble('spo2', [parsePulseOximeter(v).spo2])),
      listen(PULSE_OXIMETER, PLX_SPOT_CHECK, (v) => ble('spo2', [parsePulseOximeter(v).spo2])),
      listen(BLOOD_PRESSURE, BLOOD_PRESSURE_MEASUREMENT, (v) => {
        const p = parseBloodPressure(v);
        ble('bp', [p.systolic, p.diastolic]);
      }),
    ]);
    this.say(found.some(Boolean) ? 'vitals.device_connected' : 'vitals.device_failed');
  }
}

/** A clinician's side: the latest value of each kind, when it was measured, and a trend. */
export class VitalsMonitor {
  constructor({ root, t, formatTime }) {
    this.t = t;
    this.formatTime = formatTime;
    this.history = { hr: [], spo2: [], bp: [] };
    this.rows = {};
    const list = element('dl', { class: 'vitals-values' });
    for (const k of ['hr', 'spo2', 'bp']) {
      const value = element('dd', { class: 'vitals-value', 'data-kind': k, text: '–' });
      const trend = element('dd', { class: 'vitals-trend' });
      trend.innerHTML = `<svg viewBox="0 0 ${TREND} 20" width="90" height="20" aria-hidden="true" preserveAspectRatio="none"><polyline fill="none" stroke="currentColor" stroke-width="1" points=""></polyline></svg>`;
      const when = element('dd', { class: 'vitals-time', 'data-kind': k });
      list.append(element('dt', { words: [t, `vitals.kind.${k}`] }), value, trend, when);
      this.rows[k] = { value, trend: trend.querySelector('polyline'), when };
    }
    root.append(element('h3', { id: 'vitals-title', words: [t, 'vitals.monitor_title'] }), list);
    this.list = list;
    list.setAttribute('aria-labelledby', 'vitals-title');
  }

  /** A reading relayed by the SFU: `{k, v, t, src, from}`. */
  show(r) {
    const row = this.rows[r.k];
    if (!row || !Array.isArray(r.v)) return;
    const h = this.history[r.k];
    h.push(r.v[0]);
    if (h.length > TREND) h.shift();
    const unit = this.t(`vitals.unit.${r.k}`);
    row.value.textContent = r.k === 'bp' ? `${r.v[0]}/${r.v[1]} ${unit}` : `${r.v[0]} ${unit}`;
    row.value.dataset.value = r.v.join('/');
    row.when.textContent = this.formatTime(new Date(r.t));
    const lo = Math.min(...h);
    const span = Math.max(...h) - lo || 1;
    row.trend.setAttribute('points', h.map((v, i) => `${i},${19 - ((v - lo) / span) * 18}`).join(' '));
  }
}
