"""The residents' web widget: widget.js, widget.css and the HTML pages served by assistant/api/routes/web.py."""
