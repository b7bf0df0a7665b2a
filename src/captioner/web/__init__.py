"""The web app: `captioner serve` (a FastAPI app, its page in static/, one captioning worker)."""
from ..extras import require

require("web", "fastapi", "fastapi_offline", "python_multipart", "uvicorn")
