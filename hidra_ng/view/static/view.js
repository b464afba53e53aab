// hidra-ng view: the page. Renders frames itself (canvas), so contrast, log scale,
// colour map, zoom, pan and the pixel readout need no round trip to the server.
// Protocol: hidra_ng/view/live.py (WebSocket) and hidra_ng/view/api.py (HTTP).
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const TYPES = {
    uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, int16: Int16Array,
    uint32: Uint32Array, int32: Int32Array, float32: Float32Array, float64: Float64Array,
  };
  const CMAPS = {
    gray: [[0, 0, 0], [255, 255, 255]],
    gray_r: [[255, 255, 255], [0, 0, 0]],
    viridis: [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
      [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]],
    magma: [[0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122],
      [229, 80, 100], [251, 135, 97], [254, 194, 135], [252, 253, 191]],
    hot: [[0, 0, 0], [230, 0, 0], [255, 210, 0], [255, 255, 255]],
  };
  const NAN_COLOUR = [255, 0, 255];

  const st = {
    stream: null,      // the chosen stream
    header: null,      // the header of the frame shown
    values: null,      // its values (typed array), or null
    w: 0, h: 0,        // size of the values (display pixels)
    bin: 1,            // each display pixel is bin x bin true pixels
    full: [0, 0],      // true width, height
    zoom: 1, ox: 0, oy: 0,  // screen px per true pixel; image origin on the canvas (CSS px)
    fitted: false,
    lo: 0, hi: 1,      // the contrast range in use
    stats: null,       // {min, max, sorted sample}
    ws: null, wsUp: false,
    drawn: 0,          // frames drawn
    log: [],           // the last live frames drawn, with times (perf)
    cursor: null,      // last true pixel under the cursor
    pixelAsked: false,
  };
  const off = document.createElement('canvas');  // the frame at its own resolution
  const canvas = $('image');
  const ctx = canvas.getContext('2d');

  // ------------------------------------------------------------ stream list

  async function refreshStreams() {
    let rows;
    try {
      const r = await fetch('api/streams', { cache: 'no-store' });
      const body = await r.json();
      if (!r.ok) { setStatus(false, body.error || `receiver error ${r.status}`); return; }
      rows = body;
    } catch (e) {
      setStatus(false, 'the view server does not answer (is hidra-ng view still running?)', true);
      return;
    }
    setStatus(true, `${rows.length} stream${rows.length === 1 ? '' : 's'}`);
    // rows are updated in place (kept while their stream is listed): no flicker, no lost clicks
    const tbody = $('streams').tBodies[0];
    const names = rows.map((s) => s.name);
    for (const tr of [...tbody.rows]) {
      if (!tr.dataset.stream || !names.includes(tr.dataset.stream)) tr.remove();
    }
    if (!rows.length) {
      tbody.innerHTML = '<tr class="empty"><td colspan="4">no streams yet</td></tr>';
      return;
    }
    const existing = new Map([...tbody.rows].map((tr) => [tr.dataset.stream, tr]));
    rows.forEach((s, position) => {
      let tr = existing.get(s.name);
      if (!tr) {
        tr = document.createElement('tr');
        tr.dataset.stream = s.name;
        for (let i = 0; i < 4; i++) {
          const td = document.createElement('td');
          td.className = i === 0 ? 'name' : (i < 3 ? 'num' : '');
          tr.appendChild(td);
        }
        tr.cells[0].textContent = s.name;
        tr.cells[0].title = s.receiver ? `${s.name} (receiver ${s.receiver})` : s.name;
        tr.addEventListener('click', () => choose(s.name));
      }
      if (tbody.rows[position] !== tr) tbody.insertBefore(tr, tbody.rows[position] || null);
      const cells = [s.count, s.rate_hz.toFixed(1), s.finished ? 'yes' : ''];
      cells.forEach((text, i) => {
        if (tr.cells[i + 1].textContent !== String(text)) tr.cells[i + 1].textContent = text;
      });
      tr.classList.toggle('chosen', s.name === st.stream);
    });
  }

  let receiverUp = null;
  let receiverName = '';
  function setStatus(up, text, viewDown = false) {
    const el = $('status');
    if (up) {
      el.className = 'status ok';
      el.textContent = `receiver ${receiverName} connected \u00b7 ${text}`;
      if (receiverUp === false && st.stream && !st.header) send({ op: 'watch', stream: st.stream });
    } else {
      el.className = 'status bad';
      el.textContent = viewDown ? `${text} \u2014 retrying every second`
        : `receiver unreachable: ${text} \u2014 retrying every second`;
    }
    receiverUp = up;
  }

  async function loadStatus() {
    try {
      const r = await fetch('api/status', { cache: 'no-store' });
      const body = await r.json();
      receiverName = body.api || '';
    } catch (e) { /* refreshStreams reports it */ }
  }

  function choose(name) {
    st.stream = name;
    st.header = null; st.values = null; st.fitted = false;
    history.replaceState(null, '', '#stream=' + encodeURIComponent(name));
    $('stream-name').textContent = name;
    $('index').textContent = '\u2013';
    $('overlay').textContent = `waiting for a frame of ${name}\u2026`;
    for (const tr of $('streams').tBodies[0].rows) {
      tr.classList.toggle('chosen', tr.dataset.stream === name);
    }
    notice('');
    send({ op: 'watch', stream: name });
  }

  // -------------------------------------------------------------- websocket

  function connect() {
    const url = new URL('ws', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.search = '';
    url.hash = '';
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    st.ws = ws;
    ws.onopen = () => {
      st.wsUp = true;
      if (st.stream) send({ op: 'watch', stream: st.stream });
    };
    ws.onclose = () => {
      st.wsUp = false;
      st.pixelAsked = false;
      setStatus(false, 'the view server does not answer (is hidra-ng view still running?)', true);
      setTimeout(connect, 1000);
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === 'string') onJson(JSON.parse(ev.data));
      else onFrame(ev.data);
    };
  }

  function send(obj) {
    if (st.ws && st.ws.readyState === WebSocket.OPEN) st.ws.send(JSON.stringify(obj));
  }

  function onJson(msg) {
    if (msg.op === 'error') notice(msg.message);
    else if (msg.op === 'waiting') $('overlay').textContent = msg.message;
    else if (msg.op === 'pixel') {
      st.pixelAsked = false;
      const c = st.cursor;
      if (c && c.x === msg.x && c.y === msg.y && st.header && msg.index === st.header.index) {
        showPixel(c.x, c.y, msg.value, 'true value');
      }
    }
  }

  function onFrame(buf) {
    try {
      showFrame(buf);
    } catch (e) {  // one frame that cannot be shown must not stop the next ones
      notice(`frame not shown: ${e}`);
      send({ op: 'ack' });
    }
  }

  function showFrame(buf) {
    const receivedAt = Date.now() / 1000;
    const started = performance.now();
    const dv = new DataView(buf);
    const magic = String.fromCharCode(...new Uint8Array(buf, 0, 4));
    if (magic !== 'HNV1') throw new Error('unknown message from the server');
    const n = dv.getUint32(4, true);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, n)));
    if (header.stream !== st.stream) { ack(header); return header; }
    const view = header.view;
    const shapeChanged = !view || !st.header || !st.header.view ||
      view.shape.join() !== st.header.view.shape.join() || view.binning !== st.header.view.binning;
    st.header = header;
    if (view) {
      const Ctor = TYPES[view.dtype];
      st.h = view.shape[0]; st.w = view.shape[1]; st.bin = view.binning;
      st.values = new Ctor(buf, 8 + n, st.w * st.h);
      const fh = header.shape.length >= 2 ? header.shape[header.shape.length - 2] : 1;
      const fw = header.shape.length >= 1 ? header.shape[header.shape.length - 1] : 1;
      st.full = [fw, fh];
      st.stats = stats(st.values);
      if (shapeChanged) st.fitted = false;
      $('overlay').textContent = '';
    } else {
      st.values = null;
      $('overlay').textContent = header.kind === 'bytes'
        ? `frame #${header.index}: ${header.shape[0]} bytes of opaque data, no image`
        : `frame #${header.index}: metadata only, no image`;
    }
    showInfo(header);
    render();
    const renderMs = performance.now() - started;
    requestAnimationFrame(() => {
      st.drawn += 1;
      if (header.live) {  // [index, committed, received, drawn, render ms]: perf/view.py
        st.log.push([header.index, header.stored, receivedAt, Date.now() / 1000, renderMs]);
        if (st.log.length > 2000) st.log.splice(0, st.log.length - 2000);
      }
      ack(header);
    });
    return header;
  }

  function ack(header) {
    if (header.live) send({ op: 'ack', index: header.index });
  }

  // ------------------------------------------------------------ the frame

  // Min, max, percentiles and histogram of a frame. 8- and 16-bit integers: exact, from
  // one counting pass; wider types: min and max exact, percentiles from a sample.
  function stats(values) {
    const small = values instanceof Uint8Array || values instanceof Int8Array ||
      values instanceof Uint16Array || values instanceof Int16Array;
    return small ? countStats(values) : sampleStats(values);
  }

  function countStats(values) {
    const signed = values instanceof Int8Array || values instanceof Int16Array;
    const size = values.BYTES_PER_ELEMENT === 1 ? 256 : 65536;
    const offset = signed ? size / 2 : 0;
    const counts = new Uint32Array(size);
    for (let i = 0; i < values.length; i++) counts[values[i] + offset]++;
    let lo = 0; while (lo < size - 1 && !counts[lo]) lo++;
    let hi = size - 1; while (hi > 0 && !counts[hi]) hi--;
    return {
      min: lo - offset, max: hi - offset, integer: true,
      percentile(p) {
        const rank = Math.round(p / 100 * (values.length - 1));
        let seen = 0;
        for (let k = lo; k <= hi; k++) { seen += counts[k]; if (seen > rank) return k - offset; }
        return hi - offset;
      },
      histogram(bins) {
        const out = new Float64Array(bins.length);
        const span = hi - lo;
        for (let k = lo; k <= hi; k++) {
          if (!counts[k]) continue;
          out[span > 0 ? Math.min(bins.length - 1, Math.floor((k - lo) / (span + 1) * bins.length)) : 0] += counts[k];
        }
        return out;
      },
    };
  }

  function sampleStats(values) {
    let min = Infinity; let max = -Infinity;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v < min) min = v;
      if (v > max) max = v;
    }
    if (!Number.isFinite(min)) { min = 0; max = 0; }
    const step = Math.max(1, Math.floor(values.length / 200000));
    const sample = [];
    for (let i = 0; i < values.length; i += step) {
      const v = values[i];
      if (Number.isFinite(v)) sample.push(v);
    }
    const sorted = Float64Array.from(sample).sort();
    return {
      min, max, integer: false,
      percentile(p) {
        if (!sorted.length) return 0;
        return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(p / 100 * (sorted.length - 1))))];
      },
      histogram(bins) {
        const out = new Float64Array(bins.length);
        const span = max - min;
        const every = Math.max(1, Math.floor(values.length / 1000000));
        for (let i = 0; i < values.length; i += every) {
          const v = values[i];
          if (!Number.isFinite(v)) continue;
          out[span > 0 ? Math.min(bins.length - 1, Math.floor((v - min) / span * bins.length)) : 0] += 1;
        }
        return out;
      },
    };
  }

  function chooseRange() {
    const mode = $('contrast').value;
    const s = st.stats;
    if (mode === 'manual') {
      const lo = parseFloat($('min').value); const hi = parseFloat($('max').value);
      st.lo = Number.isFinite(lo) ? lo : s.min;
      st.hi = Number.isFinite(hi) ? hi : s.max;
    } else {
      if (mode === 'minmax') { st.lo = s.min; st.hi = s.max; } else {
        const p = parseFloat(mode);
        st.lo = s.percentile(p); st.hi = s.percentile(100 - p);
      }
      if (st.hi <= st.lo) { st.lo = s.min; st.hi = Math.max(s.max, s.min + 1); }
      $('min').value = round(st.lo); $('max').value = round(st.hi);
    }
  }

  function round(v) { return Number.isInteger(v) ? v : +v.toPrecision(6); }

  function lut(name) {
    const stops = CMAPS[name] || CMAPS.gray;
    const table = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
      const t = i / 255 * (stops.length - 1);
      const k = Math.min(stops.length - 2, Math.floor(t));
      const f = t - k;
      const c = [0, 1, 2].map((j) => Math.round(stops[k][j] + (stops[k + 1][j] - stops[k][j]) * f));
      table[i] = (255 << 24) | (c[2] << 16) | (c[1] << 8) | c[0];  // RGBA, little-endian
    }
    return table;
  }

  function render() {
    if (!st.values) { draw(); drawHistogram(); return; }
    chooseRange();
    const { w, h, values, lo, hi } = st;
    if (off.width !== w || off.height !== h) { off.width = w; off.height = h; }
    const octx = off.getContext('2d');
    const img = octx.createImageData(w, h);
    const px = new Uint32Array(img.data.buffer);
    const table = lut($('cmap').value);
    const nan = (255 << 24) | (NAN_COLOUR[2] << 16) | (NAN_COLOUR[1] << 8) | NAN_COLOUR[0];
    const useLog = $('log').checked;
    const span = hi - lo;
    const scale = span > 0 ? 255 / span : 0;
    const logScale = span > 0 ? 255 / Math.log1p(span) : 0;
    const colour = (v) => {
      if (v !== v) return nan;
      let t = v - lo;
      if (t < 0) t = 0; else if (t > span) t = span;
      return table[useLog ? Math.round(Math.log1p(t) * logScale) : Math.round(t * scale)];
    };
    if (st.stats.integer) {  // one colour per value present: a lookup per pixel
      const base = st.stats.min;
      const colours = new Uint32Array(st.stats.max - base + 1);
      for (let k = 0; k < colours.length; k++) colours[k] = colour(base + k);
      for (let i = 0; i < px.length; i++) px[i] = colours[values[i] - base];
    } else {
      for (let i = 0; i < px.length; i++) px[i] = colour(values[i]);
    }
    octx.putImageData(img, 0, 0);
    draw();
    drawHistogram();
  }

  function resizeCanvas() {
    const dpr = window.devicePixelRatio || 1;
    const cw = Math.round(canvas.clientWidth * dpr); const ch = Math.round(canvas.clientHeight * dpr);
    if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
  }

  function fit() {
    const [fw, fh] = st.full;
    if (!fw || !fh) return;
    const cw = canvas.clientWidth; const ch = canvas.clientHeight;
    st.zoom = Math.min(cw / fw, ch / fh);
    st.ox = (cw - fw * st.zoom) / 2; st.oy = (ch - fh * st.zoom) / 2;
    st.fitted = true;
  }

  function draw() {
    resizeCanvas();
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!st.values) return;
    if (!st.fitted) fit();
    ctx.imageSmoothingEnabled = false;
    const s = st.zoom * st.bin * dpr;
    ctx.setTransform(s, 0, 0, s, st.ox * dpr, st.oy * dpr);
    ctx.drawImage(off, 0, 0);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    $('zoom').textContent = `zoom ${st.zoom >= 1 ? round(st.zoom) : '1/' + round(1 / st.zoom)}`;
  }

  function drawHistogram() {
    const hc = $('hist'); const g = hc.getContext('2d');
    g.clearRect(0, 0, hc.width, hc.height);
    if (!st.values) { $('hist-range').textContent = '\u00a0'; return; }
    const { min, max } = st.stats;
    const distinct = st.stats.integer ? max - min + 1 : 140;  // no empty bins between integers
    const bins = st.stats.histogram(new Float64Array(Math.min(140, distinct)));
    const span = max - min;
    let top = 0;
    for (const c of bins) top = Math.max(top, Math.log1p(c));
    const bw = hc.width / bins.length;
    g.fillStyle = '#7d8796';
    bins.forEach((c, i) => {
      const bh = top > 0 ? Math.log1p(c) / top * (hc.height - 4) : 0;
      g.fillRect(i * bw, hc.height - bh, Math.max(1, bw - 0.5), bh);
    });
    g.strokeStyle = '#4fa3ff';
    for (const v of [st.lo, st.hi]) {
      const x = span > 0 ? (v - min) / span * hc.width : 0;
      g.beginPath(); g.moveTo(x, 0); g.lineTo(x, hc.height); g.stroke();
    }
    $('hist-range').textContent = `${round(min)} \u2026 ${round(max)} (log counts)`;
  }

  function showInfo(h) {
    $('index').textContent = h.index;
    $('stream-name').textContent = h.stream;
    const mode = $('mode');
    mode.textContent = h.live ? 'live' : 'stored';
    mode.className = 'badge ' + (h.live ? 'live' : 'stored');
    $('live').classList.toggle('on', h.live);
    const what = h.kind === 'array' ? `${h.shape.join('\u00d7')} ${h.dtype}` : h.kind;
    const when = new Date(h.stored * 1000).toISOString().replace('T', ' ').slice(0, 23);
    const note = h.view && h.view.note ? ` \u00b7 ${h.view.note}` : '';
    $('frame-desc').textContent = `${what} \u00b7 stored ${when} UTC${note}`;
    $('meta').textContent = JSON.stringify(
      { ...h.meta, _sender: h.sender, _seq: h.seq, _created: h.created, _compression: h.compression },
      null, 1);
    if (document.activeElement !== $('goto')) $('goto').value = h.index;
    if (st.cursor) readout();
  }

  function notice(text) { $('notice').textContent = text; }

  // ------------------------------------------------------- zoom, pan, readout

  function truePixelAt(clientX, clientY) {
    const r = canvas.getBoundingClientRect();
    const x = Math.floor((clientX - r.left - st.ox) / st.zoom);
    const y = Math.floor((clientY - r.top - st.oy) / st.zoom);
    return { x, y };
  }

  function readout() {
    const c = st.cursor;
    if (!c || !st.values) { $('pixel').textContent = '\u2013'; return; }
    const [fw, fh] = st.full;
    if (c.x < 0 || c.y < 0 || c.x >= fw || c.y >= fh) {
      $('pixel').textContent = `x ${c.x}  y ${c.y}  (outside)`; return;
    }
    const dx = Math.floor(c.x / st.bin); const dy = Math.floor(c.y / st.bin);
    const v = st.values[dy * st.w + dx];
    if (st.bin === 1) { showPixel(c.x, c.y, v, ''); return; }
    showPixel(c.x, c.y, v, `max of ${st.bin}\u00d7${st.bin}, asking\u2026`);
    if (!st.pixelAsked) { st.pixelAsked = true; send({ op: 'pixel', x: c.x, y: c.y }); }
  }

  function showPixel(x, y, v, note) {
    const text = typeof v === 'number' ? String(round(v)) : String(v);
    $('pixel').textContent = `x ${x}  y ${y}  value ${text}${note ? '  (' + note + ')' : ''}`;
  }

  let drag = null;
  canvas.addEventListener('mousedown', (e) => {
    drag = { x: e.clientX, y: e.clientY, ox: st.ox, oy: st.oy };
    canvas.classList.add('dragging');
  });
  window.addEventListener('mouseup', () => { drag = null; canvas.classList.remove('dragging'); });
  canvas.addEventListener('mousemove', (e) => {
    if (drag) {
      st.ox = drag.ox + e.clientX - drag.x; st.oy = drag.oy + e.clientY - drag.y;
      st.fitted = true;
      draw();
    }
    st.cursor = truePixelAt(e.clientX, e.clientY);
    readout();
  });
  canvas.addEventListener('mouseleave', () => { st.cursor = null; $('pixel').textContent = '\u2013'; });
  canvas.addEventListener('wheel', (e) => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect();
    const mx = e.clientX - r.left; const my = e.clientY - r.top;
    const factor = Math.pow(1.0015, -e.deltaY);
    const zoom = Math.min(64, Math.max(1 / 64, st.zoom * factor));
    st.ox = mx - (mx - st.ox) * zoom / st.zoom; st.oy = my - (my - st.oy) * zoom / st.zoom;
    st.zoom = zoom; st.fitted = true;
    draw();
  }, { passive: false });
  canvas.addEventListener('dblclick', () => { fit(); draw(); });
  window.addEventListener('resize', () => { if (!st.fitted) fit(); draw(); });

  // ----------------------------------------------------------------- controls

  function showIndex(i) {
    if (!st.stream || !Number.isInteger(i) || i < 0) return;
    notice('');
    send({ op: 'show', index: i });
  }
  $('prev').onclick = () => st.header && showIndex(st.header.index - 1);
  $('next').onclick = () => st.header && showIndex(st.header.index + 1);
  $('go').onclick = () => showIndex(parseInt($('goto').value, 10));
  $('goto').addEventListener('keydown', (e) => { if (e.key === 'Enter') $('go').click(); });
  $('live').onclick = () => { notice(''); send({ op: 'live' }); };
  window.addEventListener('keydown', (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    if (e.key === 'ArrowLeft') $('prev').click();
    if (e.key === 'ArrowRight') $('next').click();
  });
  $('contrast').onchange = render;
  for (const id of ['min', 'max']) {
    $(id).addEventListener('input', () => { $('contrast').value = 'manual'; render(); });
  }
  $('log').onchange = render;
  $('cmap').onchange = render;
  $('fit').onclick = () => { fit(); draw(); };
  $('one').onclick = () => {
    const cw = canvas.clientWidth; const ch = canvas.clientHeight;
    const cx = (cw / 2 - st.ox) / st.zoom; const cy = (ch / 2 - st.oy) / st.zoom;
    st.zoom = 1; st.ox = Math.round(cw / 2 - cx); st.oy = Math.round(ch / 2 - cy); st.fitted = true;
    draw();
  };

  // What tests and perf scripts read and set (selenium): nothing here is needed by the page.
  window.hidraView = {
    state: st,
    shown: () => (st.header ? { stream: st.header.stream, index: st.header.index, live: st.header.live } : null),
    setView: (zoom, ox, oy) => { st.zoom = zoom; st.ox = ox; st.oy = oy; st.fitted = true; draw(); },
    clientPoint: (x, y) => {  // client coordinates of the centre of true pixel (x, y)
      const r = canvas.getBoundingClientRect();
      return { x: r.left + st.ox + (x + 0.5) * st.zoom, y: r.top + st.oy + (y + 0.5) * st.zoom };
    },
  };

  const wanted = new URLSearchParams(location.hash.slice(1)).get('stream');
  loadStatus().then(refreshStreams);
  setInterval(refreshStreams, 1000);
  connect();
  if (wanted) choose(wanted);
})();
