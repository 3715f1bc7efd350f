// The gate console's script: plain browser JavaScript, no build step. It fetches server-rendered HTML parts with
// the person's bearer token (kept in this tab's sessionStorage), polls while a phase is live, and signs
// decisions with the person's own Ed25519 key through WebCrypto. The bytes signed come from the server's
// POST /decisions/message (domain/decisions.ts makes them, as for the CLI); this script checks that they say
// exactly what the person decided before signing them. The private key never leaves the browser.
'use strict';

(() => {
  const TOKEN = 'phasegate.token';
  const DOMAIN = 'phasegate-decision-v1\n';
  const $ = (sel) => document.querySelector(sel);
  const state = { person: null, page: null, gateKey: null, timer: null, artifacts: new Map() };

  // ---- talking to the server ----
  async function api(path, options = {}) {
    const headers = { authorization: `Bearer ${sessionStorage.getItem(TOKEN) ?? ''}` };
    if (options.body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(path, { method: options.method ?? 'GET', headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
    if (res.status === 401) {
      showLogin('Your token was not accepted (revoked or mistyped).');
      throw new Error('unauthorized');
    }
    const type = res.headers.get('content-type') ?? '';
    const value = type.includes('application/json') ? await res.json() : options.blob ? await res.blob() : await res.text();
    if (!res.ok) throw Object.assign(new Error(value && value.error ? value.error : `HTTP ${res.status}`), { kind: value && value.kind });
    return value;
  }

  function showError(err) {
    $('#error').textContent = err && err.message !== 'unauthorized' ? err.message : '';
  }

  // ---- sign in ----
  function showLogin(message) {
    sessionStorage.removeItem(TOKEN);
    $('#app').hidden = true;
    $('#login').hidden = false;
    $('#sign-out').hidden = true;
    $('#who').textContent = '';
    $('#login-error').textContent = message ?? '';
  }

  async function signIn() {
    const who = await api('/whoami');
    state.person = who.person;
    $('#who').textContent = `signed in as ${who.person}`;
    $('#sign-out').hidden = false;
    $('#login').hidden = true;
    $('#app').hidden = false;
    route();
  }

  // ---- the phase list ----
  async function loadList() {
    const params = new URLSearchParams();
    if ($('#filter-status').value) params.set('status', $('#filter-status').value);
    if ($('#filter-mine').checked) params.set('waiting', 'me');
    $('#phase-list').innerHTML = await api(`/fragments/phases?${params}`);
  }

  // ---- one phase ----
  const phaseIdOfPath = () => decodeURIComponent(location.pathname.split('/')[3] ?? '');

  async function loadPhase() {
    const page = await api(`/fragments/phases/${encodeURIComponent(phaseIdOfPath())}`);
    state.page = page;
    document.title = `${page.phaseId} · ${page.status} · phasegate`;
    $('#phase-header').innerHTML = page.header;
    $('#phase-body').innerHTML = page.body;
    if (page.gateKey !== state.gateKey) {
      state.gateKey = page.gateKey;
      $('#decide').innerHTML = page.decide;
    }
    for (const bar of document.querySelectorAll('.meter > div[data-width]')) bar.style.width = `${bar.dataset.width}%`;
    await Promise.all([showImages($('#phase-body')), showKeyStatus()]);
    if (location.hash === '#report' && $('#report').hidden && page.status === 'FROZEN') await openReport();
    return page.live;
  }

  /** Frozen charts need the token too: fetched as blobs and shown from blob: URLs (an <img> never runs script). */
  async function showImages(root) {
    for (const img of root.querySelectorAll('img[data-artifact]')) {
      const name = img.dataset.artifact;
      const key = `${state.page.phaseId}/${name}`;
      if (!state.artifacts.has(key)) {
        const blob = await api(`/phases/${encodeURIComponent(state.page.phaseId)}/artifacts/${encodeURIComponent(name)}`, { blob: true }).catch(() => null);
        if (blob === null) continue;
        state.artifacts.set(key, URL.createObjectURL(blob instanceof Blob ? blob : new Blob([blob], { type: 'image/svg+xml' })));
      }
      img.src = state.artifacts.get(key);
    }
  }

  async function openReport() {
    $('#report-body').innerHTML = await api(`/fragments/phases/${encodeURIComponent(state.page.phaseId)}/report`);
    $('#report').hidden = false;
    await showImages($('#report-body'));
    $('#report').scrollIntoView();
  }

  // ---- the person's key: imported once into IndexedDB as a non-extractable CryptoKey ----
  function keyStore(mode, fn) {
    return new Promise((resolve, reject) => {
      const open = indexedDB.open('phasegate', 1);
      open.onupgradeneeded = () => open.result.createObjectStore('keys');
      open.onerror = () => reject(open.error);
      open.onsuccess = () => {
        const tx = open.result.transaction('keys', mode);
        const req = fn(tx.objectStore('keys'));
        tx.oncomplete = () => resolve(req.result);
        tx.onerror = () => reject(tx.error);
      };
    });
  }
  const storedKey = () => keyStore('readonly', (s) => s.get(state.person));

  const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)));
  const unb64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const b64url = (text) => unb64(text.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(text.length / 4) * 4, '='));

  async function importKeyFile(file) {
    const pem = await file.text();
    const body = pem.replace(/-----(BEGIN|END) PRIVATE KEY-----/g, '').replace(/\s+/g, '');
    const der = unb64(body);
    // Imported once extractable, only to read its public half and compare it with the protocol's roster.
    const probe = await crypto.subtle.importKey('pkcs8', der, { name: 'Ed25519' }, true, ['sign']);
    const jwk = await crypto.subtle.exportKey('jwk', probe);
    const publicKey = `ed25519:${b64(b64url(jwk.x))}`;
    const expected = state.page && state.page.myPublicKey;
    if (expected !== null && expected !== undefined && expected !== publicKey) {
      throw new Error(`this key (${publicKey}) is not the one the protocol names for ${state.person}`);
    }
    const key = await crypto.subtle.importKey('pkcs8', der, { name: 'Ed25519' }, false, ['sign']);
    await keyStore('readwrite', (s) => s.put({ key, publicKey }, state.person));
  }

  async function showKeyStatus() {
    const stored = await storedKey().catch(() => undefined);
    const expected = state.page && state.page.myPublicKey;
    $('#key-status').textContent = stored
      ? `Key for ${state.person} loaded in this browser: ${stored.publicKey}${expected && expected !== stored.publicKey ? ' (NOT the key this protocol names for you)' : ''}`
      : `No key for ${state.person} in this browser yet: import your private key file to decide.`;
  }

  // ---- decisions ----
  function sameValue(a, b) {
    if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return a === b;
    const ka = Object.keys(a).sort();
    const kb = Object.keys(b).sort();
    return ka.length === kb.length && ka.every((k, i) => k === kb[i] && sameValue(a[k], b[k]));
  }

  function contentOf(kind, form) {
    const f = (name) => form.elements[name].value;
    if (kind === 'approve-budget') return { usd: f('usd').trim(), note: f('note') };
    if (kind === 'reject-budget') return { reason: f('reason') };
    return { verdict: f('verdict'), ref: f('ref'), notes: f('notes') };
  }

  /** The answer to a decision: in the page's shell, outside the decide section that each gate redraws. */
  function showResult(className, text) {
    const result = $('#decision-result');
    result.className = className;
    result.textContent = text;
  }

  async function decide(form) {
    const kind = form.dataset.kind;
    showResult('', 'signing…');
    try {
      const stored = await storedKey();
      if (!stored) throw new Error(`import your private key file first (the key of ${state.person})`);
      const nonce = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
      const unsigned = { v: 2, kind, phaseId: state.page.phaseId, protocolHash: state.page.protocolHash, run: state.page.run, by: state.person, content: contentOf(kind, form), nonce, signedAt: new Date().toISOString() };
      const { message } = await api('/decisions/message', { method: 'POST', body: unsigned });
      const bytes = unb64(message);
      // Sign only bytes that say exactly this decision: the domain line, then this very object.
      const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
      if (!text.startsWith(DOMAIN) || !sameValue(JSON.parse(text.slice(DOMAIN.length)), unsigned)) throw new Error('the server offered bytes to sign that do not match this decision; nothing was signed');
      const signature = b64(await crypto.subtle.sign({ name: 'Ed25519' }, stored.key, bytes));
      const r = await api(`/phases/${encodeURIComponent(state.page.phaseId)}/${kind}`, { method: 'POST', body: { ...unsigned, signature } });
      showResult('ok', `${r.applied ? 'accepted' : 'already applied'}: the phase is ${r.status}`);
      state.gateKey = null;
      await poll();
    } catch (err) {
      showResult('refused', err.message);
    }
  }

  // ---- routing and live updates ----
  async function poll() {
    clearTimeout(state.timer);
    try {
      const onPhase = location.pathname.startsWith('/console/phases/');
      const live = onPhase ? await loadPhase() : (await loadList(), true);
      showError(null);
      if (live) state.timer = setTimeout(poll, onPhase ? 2000 : 4000);
    } catch (err) {
      showError(err);
      if (err.message !== 'unauthorized') state.timer = setTimeout(poll, 4000);
    }
  }

  function route() {
    const onPhase = location.pathname.startsWith('/console/phases/');
    $('#list-view').hidden = onPhase;
    $('#phase-view').hidden = !onPhase;
    void poll();
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('#login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN, $('#token').value.trim());
      signIn().catch((err) => showLogin(err.message === 'unauthorized' ? 'Your token was not accepted.' : err.message));
    });
    $('#sign-out').addEventListener('click', () => showLogin('Signed out.'));
    $('#filters').addEventListener('change', () => void poll());
    $('#key-file').addEventListener('change', (e) => {
      const file = e.target.files[0];
      if (!file) return;
      importKeyFile(file)
        .then(showKeyStatus)
        .catch((err) => ($('#key-status').textContent = `Key not imported: ${err.message}`));
    });
    document.addEventListener('submit', (e) => {
      if (!e.target.matches('form.decision')) return;
      e.preventDefault();
      void decide(e.target);
    });
    document.addEventListener('click', (e) => {
      if (e.target.id !== 'open-report') return;
      e.preventDefault();
      history.replaceState(null, '', '#report');
      openReport().catch(showError);
    });
    if (sessionStorage.getItem(TOKEN)) signIn().catch(() => undefined);
    else showLogin();
  });
})();
