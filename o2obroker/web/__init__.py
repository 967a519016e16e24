"""Static files of the HTTP port: the browser client ``o2obroker.js`` and the demo page."""
