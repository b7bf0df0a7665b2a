"""The web app: `captioner serve` (a FastAPI app, its page in static/, one captioning worker)."""
