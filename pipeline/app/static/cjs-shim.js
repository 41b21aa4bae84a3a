// Lets the vendored CommonJS source of leaflet-side-by-side run as a plain script: its
// `require('leaflet')` gets the global L (its CSS is linked from the page) and
// `module.exports` lands on a throw-away object. The control registers itself on L.
window.module = { exports: {} };
window.require = function (name) {
  if (name === 'leaflet') { return window.L; }
  return {};
};
