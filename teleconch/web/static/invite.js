'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const segments = location.pathname.split('/').filter(Boolean);
  const token = decodeURIComponent(segments[segments.length - 1] || '');
  let user = '';

  function showError(message) {
    const el = $('error');
    el.textContent = message;
    el.hidden = !message;
  }

  // The server writes its messages for a terminal ("the code is wrong: ...");
  // in the page they read as sentences.
  function sentence(message) {
    const text = String(message).trim();
    if (!text) return text;
    const first = text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?]$/.test(first) ? first : first + '.';
  }

  function svgToDataUri(svg) {
    const bytes = new TextEncoder().encode(svg);
    let binary = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    }
    return 'data:image/svg+xml;base64,' + btoa(binary);
  }

  async function api(method, path, body) {
    const opts = { method, headers: { Accept: 'application/json' },
                   credentials: 'same-origin' };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, opts);
    } catch (e) {
      throw new Error('Could not reach the server. Check your connection and try again.');
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (!resp.ok) {
      const msg = (data && data.error && data.error.message) ||
                  `Request failed (HTTP ${resp.status}).`;
      const err = new Error(sentence(msg));
      err.status = resp.status;
      throw err;
    }
    return data || {};
  }

  async function loadInvite() {
    if (!token) {
      $('loading').hidden = true;
      showError('This invite link is incomplete. Ask your administrator for a new invite.');
      return;
    }
    try {
      const inv = await api('GET', '/v1/webapi/users/invite/' + encodeURIComponent(token));
      user = inv.user || '';
      $('welcome').textContent = `Welcome, ${user}`;
      if (inv.qr_svg) {
        $('qr').src = svgToDataUri(inv.qr_svg);
      } else {
        $('qr').hidden = true;
      }
      $('secret').textContent = inv.totp_secret || '';
      $('signup').hidden = false;
      $('password').focus();
    } catch (e) {
      // The server usually says so itself; say it once.
      const hint = e.status && !/administrator/i.test(e.message)
        ? ' Ask your administrator for a new invite.' : '';
      showError(e.message + hint);
    } finally {
      $('loading').hidden = true;
    }
  }

  function validate(password, confirm, otp) {
    if (password.length < 12) return ['password', 'Password must be at least 12 characters.'];
    if (password !== confirm) return ['password-confirm', 'Passwords do not match.'];
    if (!/^\d{6}$/.test(otp)) return ['otp', 'The one-time code must be 6 digits.'];
    return null;
  }

  // One span per word, so a narrow screen wraps the command between words,
  // never inside one ("-" / "-user"); copying it gives the plain command.
  function showCommand(words) {
    const pre = $('login-command');
    pre.textContent = '';
    words.forEach((word, i) => {
      if (i > 0) pre.append(' ');
      const span = document.createElement('span');
      span.textContent = word;
      pre.append(span);
    });
  }

  async function onSubmit(event) {
    event.preventDefault();
    showError('');
    const password = $('password').value;
    const confirm = $('password-confirm').value;
    const otp = $('otp').value.replace(/\s+/g, '');
    const problem = validate(password, confirm, otp);
    if (problem) {
      showError(problem[1]);
      $(problem[0]).focus();
      return;
    }
    const button = $('submit');
    button.disabled = true;
    button.textContent = 'Creating account…';
    try {
      const res = await api('POST', '/v1/webapi/users/invite',
                            { token, password, otp_token: otp });
      user = res.user || user;
      showCommand(['teleconch', 'login', '--proxy', location.host, '--user', user]);
      $('signup').remove();
      $('done').hidden = false;
    } catch (e) {
      showError(e.message);
      $('otp').value = '';
      $('otp').focus();
    } finally {
      button.disabled = false;
      button.textContent = 'Create account';
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('form').addEventListener('submit', onSubmit);
    loadInvite();
  });
})();
