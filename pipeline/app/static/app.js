// Luminescence map page: one view at a time, two layers swiped side by side, labels that say
// what each side is. Everything comes from this server (no CDN, nothing from the internet).
(function () {
  'use strict';

  var ROLE_NAMES = { historic: 'Historic', colourised: 'Colourised', modern: 'Modern' };
  var app = { views: {}, view: null, map: null, layers: {}, base: null, sbs: null, outline: null,
              loading: {}, upload: null, sides: null };
  window.luminescence = app;  // for the browser test and the curious

  function $(id) { return document.getElementById(id); }

  function showMessage(text, info) {
    var box = $('message');
    box.textContent = text || '';
    box.className = info ? 'info' : '';
    box.hidden = !text;
  }

  function errorOf(response) {
    return response.json().then(function (body) { return body.error || response.statusText; },
                                function () { return response.status + ' ' + response.statusText; });
  }

  // An address can say anything: only an object's own keys count (not 'constructor' and the like).
  function known(table, key) { return key !== null && Object.prototype.hasOwnProperty.call(table, key); }

  function escapeHtml(text) {
    var div = document.createElement('div');
    div.textContent = text || '';
    return div.innerHTML;
  }

  function setStatus() {
    var pending = 0;
    Object.keys(app.loading).forEach(function (k) { pending += app.loading[k]; });
    $('status').textContent = pending ? 'loading ' + pending + ' tile(s)…' : '';
  }

  // ------------------------------------------------------------------ layers
  // The part of the map (container x from, to) where a layer can be seen: its side of the
  // swipe, or null for all of it (a layer on both sides, or the opacity base under them).
  function visibleSpan(layer) {
    if (!app.sides || !app.sbs || !app.map) { return null; }
    var onLeft = app.sides.left === layer, onRight = app.sides.right === layer;
    if (onLeft === onRight) { return null; }
    var x = app.sbs.getPosition();
    return onLeft ? [0, x] : [x, app.map.getSize().x];
  }

  // A tile layer that asks only for the tiles on its side of the swipe (and the column the
  // divider crosses): the hidden half of the colourised layer would cost the model as much
  // as the half a user sees. Moving the swipe brings in what it uncovers (followSwipe).
  var SideTileLayer = L.TileLayer.extend({
    _getTiledPixelBounds: function (center) {
      var bounds = L.TileLayer.prototype._getTiledPixelBounds.call(this, center);
      var span = visibleSpan(this);
      if (!span) { return bounds; }
      var perPx = (bounds.max.x - bounds.min.x) / this._map.getSize().x;
      return L.bounds([bounds.min.x + span[0] * perPx, bounds.min.y],
                      [bounds.min.x + span[1] * perPx, bounds.max.y]);
    }
  });

  function followSwipe() {
    if (!app.sides) { return; }
    [app.sides.left, app.sides.right].forEach(function (layer) {
      if (layer && app.map.hasLayer(layer) && layer._tileZoom !== undefined) { layer._update(); }
    });
  }

  function tileLayer(view, role) {
    var info = view.layers[role];
    var layer = new SideTileLayer('/tiles/' + encodeURIComponent(view.name) + '/' + role + '/{z}/{x}/{y}', {
      minZoom: view.min_zoom, maxZoom: view.zoom + 2, minNativeZoom: view.min_zoom, maxNativeZoom: view.zoom,
      bounds: L.latLngBounds(view.bounds), attribution: escapeHtml(info.attribution || ''),
      keepBuffer: 1, updateWhenZooming: false, crossOrigin: false
    });
    app.loading[role] = 0;
    var reported = false;
    layer.on('tileloadstart', function () { app.loading[role] += 1; setStatus(); });
    layer.on('tileload', function () { app.loading[role] = Math.max(0, app.loading[role] - 1); setStatus(); });
    layer.on('tileerror', function (e) {
      app.loading[role] = Math.max(0, app.loading[role] - 1);
      setStatus();
      if (reported) { return; }
      reported = true;  // one message per layer, with the server's reason
      fetch(e.tile.src).then(function (r) { return r.ok ? null : errorOf(r); }).then(function (why) {
        if (why) { showMessage(ROLE_NAMES[role] + ' layer: ' + why); }
      });
    });
    return layer;
  }

  function label(view, role) {
    var info = view.layers[role];
    var parts = ['<strong>' + ROLE_NAMES[role] + '</strong>: ' + escapeHtml(info.title)];
    if (role === 'colourised') {
      parts.push(info.available ? '<span class="warn">' + escapeHtml(info.label) + '</span>'
                                : '<span class="warn">not available: ' + escapeHtml(info.error) + '</span>');
    }
    if (info.synthetic) {
      parts.push('<span class="warn">SYNTHETIC film emulation — not a real historic photograph</span>');
    } else if (info.gray) {
      parts.push('<span class="warn">a colour photo converted to gray — not a historic photograph</span>');
    }
    if (role === 'colourised' && view.layers.historic.synthetic) {
      parts.push('<span class="warn">input is SYNTHETIC</span>');
    }
    return parts.join('<br>');
  }

  var PHOTOS_FIRST_MS = 1500;

  function addAfter(layer, others) {
    var added = false, view = app.view;
    function add() {
      // Only if the user has not switched view or sides meanwhile.
      if (added || app.view !== view || app.layers.colourised !== layer) { return; }
      var chosen = roles();
      if (chosen.left !== 'colourised' && chosen.right !== 'colourised') { return; }
      added = true;
      layer.addTo(app.map);
    }
    var pending = others.length;
    others.forEach(function (other) {
      other.once('load', function () { pending -= 1; if (pending === 0) { add(); } });
    });
    setTimeout(add, PHOTOS_FIRST_MS);
  }

  function roles() { return { left: $('left').value, right: $('right').value }; }

  function arrange() {
    var view = app.view, map = app.map, chosen = roles();
    // Before any layer joins the map, so that it asks only for its own side's tiles.
    app.sides = { left: app.layers[chosen.left], right: app.layers[chosen.right] };
    Object.keys(app.layers).forEach(function (role) {
      if (role !== chosen.left && role !== chosen.right && map.hasLayer(app.layers[role])) {
        map.removeLayer(app.layers[role]);
      }
    });
    var opacity = parseFloat($('opacity').value);
    // The historic photo lies under both sides, so lowering the opacity blends a side into it.
    if (opacity < 1 && !map.hasLayer(app.base)) { app.base.addTo(map); app.base.bringToBack(); }
    if (opacity >= 1 && map.hasLayer(app.base)) { map.removeLayer(app.base); }
    // Photos first: a colourised layer joins the map once the other side has loaded (or after
    // PHOTOS_FIRST_MS), so the browser's few connections bring the photos in at once instead of
    // queueing them behind tiles the model is still computing.
    var photos = [chosen.left, chosen.right].filter(function (r) { return r !== 'colourised'; });
    var waitFor = photos.map(function (r) { return app.layers[r]; })
      .filter(function (layer) { return !map.hasLayer(layer); });
    [chosen.left, chosen.right].forEach(function (role) {
      var layer = app.layers[role];
      layer.setOpacity(opacity);
      if (map.hasLayer(layer)) { return; }
      if (role === 'colourised' && waitFor.length) { addAfter(layer, waitFor); } else { layer.addTo(map); }
    });
    app.sbs.setLeftLayers(app.layers[chosen.left]);
    app.sbs.setRightLayers(app.layers[chosen.right]);
    $('label-left').innerHTML = label(view, chosen.left);
    $('label-right').innerHTML = label(view, chosen.right);
    remember();
  }

  // ------------------------------------------------------------------ the address
  // The address says what the map shows (view, sides, swipe, place), so a link brings someone
  // to the same spot: ?view=erie_film&left=historic&right=colourised&swipe=0.5&lat=…&lng=…&z=19
  function placeIn(params, view) {
    var lat = parseFloat(params.get('lat')), lng = parseFloat(params.get('lng'));
    var zoom = parseInt(params.get('z'), 10);
    if (!(isFinite(lat) && isFinite(lng) && isFinite(zoom))) { return null; }
    if (!L.latLngBounds(view.bounds).pad(0.5).contains([lat, lng])) { return null; }  // not this view's
    return { center: [lat, lng], zoom: Math.min(Math.max(zoom, view.min_zoom), view.zoom + 2) };
  }

  function swipeShare() { return parseFloat(document.querySelector('.leaflet-sbs-range').value); }

  function rememberNow() {
    if (!app.view || !window.history || !history.replaceState) { return; }
    var centre = app.map.getCenter(), chosen = roles();
    var query = new URLSearchParams({
      view: app.view.name, left: chosen.left, right: chosen.right, swipe: swipeShare().toFixed(3),
      lat: centre.lat.toFixed(6), lng: centre.lng.toFixed(6), z: String(app.map.getZoom())
    });
    try {
      history.replaceState(null, '', location.pathname + '?' + query.toString());
    } catch (e) { /* some browsers refuse many calls in a row; the next one catches up */ }
  }

  // At most a few times a second (the opacity slider fires on every step), the last one kept.
  var remember = L.Util.throttle(rememberNow, 250);

  function showView(name, at) {
    var view = app.views[name];
    app.view = view;
    showMessage('');
    var map = app.map;
    Object.keys(app.layers).forEach(function (role) { map.removeLayer(app.layers[role]); });
    if (app.base) { map.removeLayer(app.base); }
    if (app.outline) { map.removeLayer(app.outline); }
    app.layers = {};
    ['historic', 'colourised', 'modern'].forEach(function (role) { app.layers[role] = tileLayer(view, role); });
    app.base = tileLayer(view, 'historic');
    map.setMinZoom(view.min_zoom);
    map.setMaxZoom(view.zoom + 2);
    map.setMaxBounds(L.latLngBounds(view.bounds).pad(0.5));
    map.setView(at ? at.center : view.center, at ? at.zoom : view.zoom, { animate: false });
    app.outline = L.geoJSON(view.aoi, { style: { color: '#ffcc00', weight: 2, fill: false },
                                        interactive: false }).addTo(map);
    arrange();
    var missing = ['historic', 'modern', 'colourised'].filter(function (r) { return !view.layers[r].available; });
    if (missing.length) {
      showMessage(missing.map(function (r) {
        return ROLE_NAMES[r] + ' layer unavailable: ' + (view.layers[r].error || 'see the log');
      }).join(' — '));
    }
  }

  // ------------------------------------------------------------------ export and upload
  function download(blob, name) {
    var a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  function exportView() {
    var b = app.map.getBounds();
    var bbox = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map(function (v) { return v.toFixed(7); });
    var url = '/api/views/' + encodeURIComponent(app.view.name) + '/export?bbox=' + bbox.join(',');
    showMessage('Colourising this view for download…', true);
    fetch(url).then(function (r) {
      if (!r.ok) { return errorOf(r).then(function (why) { throw new Error(why); }); }
      var name = /filename="?([^";]+)"?/.exec(r.headers.get('content-disposition') || '');
      return r.blob().then(function (blob) { download(blob, name ? name[1] : 'view.tif'); showMessage(''); });
    }).catch(function (err) { showMessage('Download failed: ' + err.message); });
  }

  function uploadPhoto() {
    var file = $('upload').files[0];
    if (!file) { return; }
    var limit = app.limits.max_bytes;
    if (file.size > limit) {
      showMessage('The file is ' + file.size.toLocaleString() + ' bytes, more than the limit of ' +
                  limit.toLocaleString() + ' bytes.');
      return;
    }
    showMessage('Colourising ' + file.name + '…', true);
    var url = '/api/upload?view=' + encodeURIComponent(app.view.name) + '&name=' + encodeURIComponent(file.name);
    fetch(url, { method: 'POST', body: file, headers: { 'Content-Type': 'application/octet-stream' } })
      .then(function (r) {
        if (!r.ok) { return errorOf(r).then(function (why) { throw new Error(why); }); }
        return r.json();
      }).then(function (result) {
        app.upload = result;
        $('result-text').textContent = result.file_name + ' (' + result.width + '×' + result.height + ', ' +
          (result.georeferenced ? 'Cloud-Optimized GeoTIFF' : 'PNG') + '). ' + result.note + '.';
        $('result-preview').src = result.preview;
        $('result-download').href = result.download;
        $('result-download').setAttribute('download', result.file_name);
        $('result').hidden = false;
        showMessage('');
      }).catch(function (err) { showMessage('Upload refused: ' + err.message); })
      .then(function () { $('upload').value = ''; });
  }

  // ------------------------------------------------------------------ start
  function start(data) {
    app.limits = data.upload;
    app.map = L.map('map', { zoomControl: true, attributionControl: true, fadeAnimation: false });
    L.control.scale({ imperial: false, maxWidth: 160 }).addTo(app.map);
    app.sbs = L.control.sideBySide([], []).addTo(app.map);
    app.sbs.on('dividermove', L.Util.throttle(followSwipe, 100));
    var params = new URLSearchParams(location.search);
    var swipe = parseFloat(params.get('swipe'));  // where the divider starts (see remember)
    if (swipe >= 0 && swipe <= 1) {
      var range = document.querySelector('.leaflet-sbs-range');
      range.value = swipe;
      range.dispatchEvent(new Event('input'));
    }
    var select = $('view');
    data.views.forEach(function (view) {
      app.views[view.name] = view;
      select.add(new Option(view.title, view.name));
    });
    ['left', 'right'].forEach(function (side) {
      Object.keys(ROLE_NAMES).forEach(function (role) { $(side).add(new Option(ROLE_NAMES[role], role)); });
    });
    $('left').value = known(ROLE_NAMES, params.get('left')) ? params.get('left') : 'historic';
    $('right').value = known(ROLE_NAMES, params.get('right')) ? params.get('right') : 'colourised';
    select.addEventListener('change', function () { showView(select.value); });
    $('left').addEventListener('change', arrange);
    $('right').addEventListener('change', arrange);
    $('opacity').addEventListener('input', arrange);
    $('export').addEventListener('click', exportView);
    $('upload').addEventListener('change', uploadPhoto);
    $('result-close').addEventListener('click', function () { $('result').hidden = true; });
    var wanted = params.get('view'), first = known(app.views, wanted) ? wanted : data.views[0].name;
    showView(first, placeIn(params, app.views[first]));
    select.value = app.view.name;
    app.map.on('moveend', remember);
    document.querySelector('.leaflet-sbs-range').addEventListener('change', remember);
  }

  fetch('/api/views').then(function (r) {
    if (!r.ok) { return errorOf(r).then(function (why) { throw new Error(why); }); }
    return r.json();
  }).then(start).catch(function (err) { showMessage('Cannot load the views: ' + err.message); });
}());
