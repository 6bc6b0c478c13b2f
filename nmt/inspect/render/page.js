(function () {
  // The maps are looked up at each change, not once: nmt serve's page replaces them and then fires 'change' on #kind.
  const pick = { kind: document.getElementById('kind'), layer: document.getElementById('layer'), head: document.getElementById('head') };
  function fill(select, values, keep) {
    select.innerHTML = '';
    for (const [value, text] of values) { const o = document.createElement('option'); o.value = value; o.textContent = text; select.appendChild(o); }
    if (values.some(([v]) => v === keep)) select.value = keep;
  }
  function update() {
    const grids = Array.from(document.querySelectorAll('section.grid'));
    const kind = pick.kind.value;
    const mine = grids.filter(g => g.dataset.kind === kind);
    const layers = [...new Set(mine.map(g => g.dataset.layer))];
    fill(pick.layer, layers.map(l => [l, l]), pick.layer.value || layers[layers.length - 1]);
    const heads = [...new Set(mine.filter(g => g.dataset.layer === pick.layer.value).map(g => g.dataset.head))];
    fill(pick.head, heads.map(h => [h, h === 'avg' ? 'average of heads' : h]), pick.head.value || 'avg');
    for (const g of grids) g.hidden = !(g.dataset.kind === kind && g.dataset.layer === pick.layer.value && g.dataset.head === pick.head.value);
  }
  pick.kind.addEventListener('change', update);
  pick.layer.addEventListener('change', update);
  pick.head.addEventListener('change', update);
  const info = document.getElementById('info');
  document.addEventListener('mouseover', e => { if (e.target.matches('table.map td')) info.textContent = e.target.title; });
  update();
})();
