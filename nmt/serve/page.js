// nmt serve's page: send the sentence to v1/attention, show the translation, put nmt attend's maps in #maps
// and let nmt attend's picker script (inlined before this one) find them.
(function () {
  const $ = id => document.getElementById(id);
  const form = $('ask'), source = $('source'), status = $('status'), button = $('go');
  fetch('health').then(r => r.json()).then(h => {
    $('model').textContent = h.status === 'ready' ? h.model : 'the model is ' + h.status + '; reload in a moment';
  }).catch(() => { $('model').textContent = 'the server does not answer'; });
  source.addEventListener('keydown', e => {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener('submit', async e => {
    e.preventDefault();
    const text = source.value.replace(/\s+/g, ' ').trim();  // one segment: line breaks are spaces
    if (!text) { status.textContent = 'type a sentence first'; return; }
    status.textContent = 'translating…';
    button.disabled = true;
    try {
      const r = await fetch('v1/attention', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ text }) });
      const answer = await r.json();
      if (!r.ok) { status.textContent = answer.error || ('error ' + r.status); return; }
      $('translation').textContent = answer.translation;
      $('facts').innerHTML = answer.facts_html;
      $('maps').innerHTML = answer.maps_html || '';
      $('attention').hidden = !answer.maps_html;
      $('note').textContent = answer.note || '';
      $('result').hidden = false;
      status.textContent = '';
      $('kind').dispatchEvent(new Event('change'));
    } catch (err) {
      status.textContent = 'no answer from the server (' + err + ')';
    } finally {
      button.disabled = false;
    }
  });
})();
