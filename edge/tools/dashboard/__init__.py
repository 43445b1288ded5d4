"""``emotion-edge dashboard``: a local web page with every device's live numbers (never images).

:mod:`.feed` turns the folded messages into the page's JSON and keeps a timeline of the last minutes;
:mod:`.server` serves the page, its shipped scripts (``static/``, no CDN) and a Server-Sent Events stream.
"""
