// The account page: change the password (current one + a code), enrol a
// new authenticator (password -> a new secret and QR -> a code from it).
import { APIError, api, mountHeader, requireSession, sentence, showError }
  from '/web/static/app.js';

const $ = (id) => document.getElementById(id);
const MIN_PASSWORD = 12;

function message(e) {
  return e instanceof APIError ? e.message : String(e);
}

function svgToDataUri(svg) {
  const bytes = new TextEncoder().encode(svg);
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return 'data:image/svg+xml;base64,' + btoa(binary);
}

async function busy(button, label, work) {
  const idle = button.textContent;
  button.disabled = true;
  button.textContent = label;
  try {
    await work();
  } finally {
    button.disabled = false;
    button.textContent = idle;
  }
}

function passwordProblem() {
  const code = $('password-otp').value.replace(/\s+/g, '');
  if (!$('old-password').value) return ['old-password', 'Enter your current password.'];
  if (!/^\d{6}$/.test(code)) return ['password-otp', 'Enter the 6-digit code from your authenticator app.'];
  if ($('new-password').value.length < MIN_PASSWORD) {
    return ['new-password', `The new password must be at least ${MIN_PASSWORD} characters.`];
  }
  if ($('new-password').value !== $('new-password-confirm').value) {
    return ['new-password-confirm', 'The new passwords do not match.'];
  }
  return null;
}

async function changePassword(event) {
  event.preventDefault();
  const error = $('password-error');
  showError(error, '');
  $('password-done').hidden = true;
  const problem = passwordProblem();
  if (problem) {
    showError(error, problem[1]);
    $(problem[0]).focus();
    return;
  }
  await busy($('password-submit'), 'Changing…', async () => {
    try {
      const answer = await api('PUT', '/v1/webapi/users/password', {
        old_password: $('old-password').value,
        new_password: $('new-password').value,
        second_factor_token: $('password-otp').value.replace(/\s+/g, ''),
      });
      $('password-form').reset();
      $('password-done').textContent = sentence(answer.message || 'your password is changed');
      $('password-done').hidden = false;
    } catch (e) {
      showError(error, message(e));
      $('password-otp').value = '';
      $('password-otp').focus();
    }
  });
}

async function startEnrolment(event) {
  event.preventDefault();
  const error = $('mfa-error');
  showError(error, '');
  $('mfa-done').hidden = true;
  if (!$('mfa-password').value) {
    showError(error, 'Enter your password.');
    $('mfa-password').focus();
    return;
  }
  await busy($('mfa-start-submit'), 'Asking…', async () => {
    try {
      const pending = await api('POST', '/v1/webapi/mfa/authenticator',
                                { password: $('mfa-password').value });
      $('mfa-start').reset();
      $('mfa-qr').src = svgToDataUri(pending.qr_svg);
      $('mfa-secret').textContent = pending.totp_secret;
      const until = new Date(pending.expires * 1000).toLocaleTimeString();
      $('mfa-expires').textContent = `Confirm it before ${until}; until then your old authenticator stays in force.`;
      $('mfa-start').hidden = true;
      $('mfa-confirm').hidden = false;
      $('mfa-otp').focus();
    } catch (e) {
      showError(error, message(e));
      $('mfa-password').focus();
    }
  });
}

async function confirmEnrolment(event) {
  event.preventDefault();
  const error = $('mfa-error');
  showError(error, '');
  const code = $('mfa-otp').value.replace(/\s+/g, '');
  if (!/^\d{6}$/.test(code)) {
    showError(error, 'Enter the 6-digit code your new authenticator shows.');
    $('mfa-otp').focus();
    return;
  }
  await busy($('mfa-confirm-submit'), 'Confirming…', async () => {
    try {
      const answer = await api('PUT', '/v1/webapi/mfa/authenticator', { second_factor_token: code });
      $('mfa-confirm').reset();
      $('mfa-confirm').hidden = true;
      $('mfa-start').hidden = false;
      $('mfa-done').textContent = sentence(answer.message || 'your new authenticator is enrolled');
      $('mfa-done').hidden = false;
    } catch (e) {
      showError(error, message(e));
      $('mfa-otp').value = '';
      $('mfa-otp').focus();
    }
  });
}

const held = requireSession();
if (held) {
  mountHeader('account');
  // For password managers: whose password these forms are about.
  for (const input of document.querySelectorAll('.account-name')) input.value = held.user || '';
  $('password-form').addEventListener('submit', changePassword);
  $('mfa-start').addEventListener('submit', startEnrolment);
  $('mfa-confirm').addEventListener('submit', confirmEnrolment);
}
