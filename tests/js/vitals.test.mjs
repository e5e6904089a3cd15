// The web client's vitals parsing (signaling/web/vitals.js): Bluetooth GATT measurements as
// the SIG specifies them, and the plausibility check the SFU also applies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  sfloat, parseHeartRate, parsePulseOximeter, parseBloodPressure, reading,
} from '../../signaling/web/vitals.js';

const view = (bytes) => new DataView(new Uint8Array(bytes).buffer);

test('heart rate measurement: 8- and 16-bit values by the flags', () => {
  assert.equal(parseHeartRate(view([0x00, 72])), 72);
  assert.equal(parseHeartRate(view([0x01, 0x2c, 0x01])), 300);
});

test('SFLOAT: exponent, negative mantissa, reserved values', () => {
  assert.equal(sfloat(0x0061), 97);
  assert.equal(sfloat(0xf3e8), 100); // 1000 x 10^-1
  assert.equal(sfloat(0x0fff), -1);
  assert.ok(Number.isNaN(sfloat(0x07ff))); // NaN
  assert.ok(Number.isNaN(sfloat(0x0800))); // not at this resolution
});

test('pulse oximeter and blood pressure (mmHg and kPa)', () => {
  assert.deepEqual(parsePulseOximeter(view([0x00, 97, 0x00, 72, 0x00])), { spo2: 97, pulse: 72 });
  assert.deepEqual(parseBloodPressure(view([0x00, 120, 0, 80, 0, 93, 0])), { systolic: 120, diastolic: 80 });
  // 16.0 / 10.7 kPa: exponent -1, mantissas 160 and 107.
  const kpa = parseBloodPressure(view([0x01, 160, 0xf0, 107, 0xf0, 0, 0]));
  assert.deepEqual(kpa, { systolic: 120, diastolic: 80 });
});

test('readings outside the plausible range are not sent', () => {
  assert.equal(reading('bp', [80, 120], 'manual'), null);
  assert.equal(reading('hr', [900], 'manual'), null);
  assert.equal(reading('spo2', [NaN], 'ble'), null);
  assert.equal(reading('temp', [37], 'manual'), null);
  const r = reading('bp', [128, 82], 'manual');
  assert.deepEqual([r.k, r.v, r.src], ['bp', [128, 82], 'manual']);
  assert.ok(Number.isInteger(r.t));
});
