"""The playground's static files (served by `deployments.routes.playground`).

`index.html`, `app.js` (key, catalog, queue, results), `form.js` (JSON schema → form),
`viewer.js` (three.js mesh viewer) and `style.css` are ours; `vendor/three/` is three.js,
copied from its npm package by `make playground` (not committed).
"""
