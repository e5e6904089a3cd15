// The client's words in the patient's language. Every visible string is in a catalogue
// (i18n/<code>.json, one per language, listed in i18n/languages.json); this module picks the
// language, fills in named placeholders, chooses plural forms (Intl.PluralRules) and writes
// times in the patient's own time zone and style (Intl.DateTimeFormat,
// Intl.RelativeTimeFormat). Which language: `?lang=` on the link (the booking system knows
// the patient's), else the one picked here before, else the browser's, else English.

const STORE = 'metaclinic.lang';
const FALLBACK = 'en';

let languages = { [FALLBACK]: { name: FALLBACK, tag: FALLBACK, dir: 'ltr' } };
let current = FALLBACK;
let words = {};
let fallbackWords = {};
const cache = new Map();
const listeners = [];

async function load(name) {
  if (cache.has(name)) return cache.get(name);
  const res = await fetch(`/i18n/${name}.json`).catch(() => null);
  const json = res && res.ok ? await res.json().catch(() => ({})) : {};
  if (Object.keys(json).length) cache.set(name, json);
  return json;
}

/** The supported language for a BCP 47 tag (`ko-KR` is `ko`), or null. */
export function match(tag) {
  if (!tag || typeof tag !== 'string') return null;
  const lower = tag.trim().toLowerCase().replace('_', '-');
  if (languages[lower]) return lower;
  const base = lower.split('-')[0];
  return languages[base] ? base : null;
}

function remembered() {
  try { return localStorage.getItem(STORE); } catch { return null; }
}

/** The language this page should start in. */
function choose() {
  const asked = new URLSearchParams(location.search).get('lang');
  const browser = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
  for (const tag of [asked, remembered(), ...browser]) {
    const code = match(tag);
    if (code) return code;
  }
  return FALLBACK;
}

/** Load the catalogues and apply the page's language. */
export async function init() {
  const listed = await load('languages');
  if (Object.keys(listed).length) languages = listed;
  fallbackWords = await load(FALLBACK);
  await use(choose(), false);
}

/**
 * Switch to `code` (a picker's choice when `remember`: kept in localStorage and in the
 * address, so a reload keeps it). Everything on the page is said again in that language.
 */
export async function use(code, remember = true) {
  const next = match(code) || FALLBACK;
  const loaded = next === FALLBACK ? fallbackWords : await load(next);
  current = Object.keys(loaded).length ? next : FALLBACK;
  words = current === FALLBACK ? fallbackWords : loaded;
  const html = document.documentElement;
  html.lang = languages[current].tag;
  html.dir = languages[current].dir;
  if (remember) {
    try { localStorage.setItem(STORE, current); } catch { /* private mode: the address keeps it */ }
    const url = new URL(location.href);
    url.searchParams.set('lang', current);
    history.replaceState(history.state, '', url.pathname + url.search + url.hash);
  }
  translatePage();
  for (const f of listeners) f(current);
}

/** Call `f(code)` after every change of language. */
export function onChange(f) {
  listeners.push(f);
}

export function language() {
  return current;
}

/** [[code, { name, tag, dir }]] of every language offered. */
export function languageList() {
  return Object.entries(languages);
}

function locale() {
  return languages[current].tag;
}

/** The text of `key` with its `{placeholders}` filled; `count` chooses the plural form. */
export function t(key, params = {}) {
  let entry = words[key] ?? fallbackWords[key];
  if (entry == null) {
    console.warn('i18n: no text for', key);
    return key;
  }
  if (typeof entry === 'object') {
    const form = new Intl.PluralRules(locale()).select(Number(params.count) || 0);
    entry = entry[form] ?? entry.other;
  }
  return entry.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? value(params[name]) : whole));
}

function value(v) {
  return typeof v === 'number' ? new Intl.NumberFormat(locale()).format(v) : String(v);
}

/** A number with `digits` decimals, as the language writes it. */
export function number(n, digits = 0) {
  return new Intl.NumberFormat(locale(), { minimumFractionDigits: digits, maximumFractionDigits: digits }).format(n);
}

/** A UTC instant (RFC 3339) as a clock time in the patient's own time zone and style. */
export function time(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  return new Intl.DateTimeFormat(locale(), { hour: 'numeric', minute: '2-digit' }).format(d);
}

/** How far `iso` is from now: "in 5 minutes", "2 hours ago", as the language says it. */
export function relative(iso, now = Date.now()) {
  const minutes = Math.round((new Date(iso).getTime() - now) / 60000);
  const rtf = new Intl.RelativeTimeFormat(locale(), { numeric: 'auto' });
  if (Math.abs(minutes) < 60) return rtf.format(minutes, 'minute');
  const hours = Math.round(minutes / 60);
  if (Math.abs(hours) < 48) return rtf.format(hours, 'hour');
  return rtf.format(Math.round(hours / 24), 'day');
}

/** "A, B and C" in the language. */
export function list(items, type = 'conjunction') {
  return new Intl.ListFormat(locale(), { style: 'long', type }).format(items);
}

/**
 * Put the catalogue's text into the page: `data-i18n="key"` sets an element's text,
 * `data-i18n-attr="aria-label:key; placeholder:key2"` its attributes.
 */
export function translatePage(root = document) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-attr]')) {
    for (const pair of el.dataset.i18nAttr.split(';')) {
      const [attr, key] = pair.split(':').map((s) => s.trim());
      if (attr && key) el.setAttribute(attr, t(key));
    }
  }
}

/** Fill a <select> with the languages (each named in itself) and switch on change. */
export function picker(select) {
  select.replaceChildren(...languageList().map(([code, l]) => {
    const option = document.createElement('option');
    option.value = code;
    option.lang = l.tag;
    option.dir = l.dir;
    option.textContent = l.name;
    return option;
  }));
  select.value = current;
  onChange((code) => { select.value = code; });
  select.addEventListener('change', () => use(select.value));
}
