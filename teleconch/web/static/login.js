// The login page: password and one-time code for a web session, then on to
// the page that sent the person here (the server checked `data-next`: a
// page of this UI only).
import { HOME, APIError, api, saveSession, showError } from '/web/static/app.js';

const $ = (id) => document.getElementById(id);

function nextPage() {
  const next = document.body.dataset.next || '';
  // The server allows only /web/ paths; refuse anything else here as well.
  return next.startsWith('/web/') && !next.startsWith('/web/login') ? next : HOME;
}

function problem(user, password, code) {
  if (!user) return ['user', 'Enter your username.'];
  if (!password) return ['password', 'Enter your password.'];
  if (!/^\d{6}$/.test(code)) {
    return ['otp', 'Enter the 6-digit one-time code from your authenticator app.'];
  }
  return null;
}

async function onSubmit(event) {
  event.preventDefault();
  const error = $('error');
  showError(error, '');
  const user = $('user').value.trim();
  const password = $('password').value;
  const code = $('otp').value.replace(/\s+/g, '');
  const wrong = problem(user, password, code);
  if (wrong) {
    showError(error, wrong[1]);
    $(wrong[0]).focus();
    return;
  }
  const button = $('submit');
  button.disabled = true;
  button.textContent = 'Logging in…';
  try {
    const answer = await api('POST', '/v1/webapi/sessions',
                             { user, pass: password, second_factor_token: code });
    saveSession(answer.token, answer.user, answer.session_expires);
    location.assign(nextPage());
  } catch (e) {
    showError(error, e instanceof APIError ? e.message : 'The login failed. Try again.');
    // A code is good once: the next try needs the next one.
    $('otp').value = '';
    $('otp').focus();
    button.disabled = false;
    button.textContent = 'Log in';
  }
}

$('login').addEventListener('submit', onSubmit);
