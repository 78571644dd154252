"""One APIRouter per resource; app.py includes them in matching order."""
