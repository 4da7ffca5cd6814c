"""``vlmsam serve``: an HTTP API (FastAPI) and a web page (Gradio) over the one engine."""
