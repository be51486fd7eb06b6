"""The dashboard: server-rendered pages (Jinja2), htmx (vendored under static/vendor) and a
small script that refreshes parts of a page when the event stream says something changed."""
