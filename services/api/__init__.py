"""The socket API: OpenAI-compatible chat completions plus npllm's own endpoints.

FastAPI's bigger-applications layout: ``app.py`` builds the application, one router per
resource in ``routers/`` (its request models beside it), the live objects and what the
routes ask of them in ``service.py``, errors as OpenAI-shaped JSON in ``errors.py``, the
body guard and request log in ``middleware.py``, OpenAI's completion format in
``openai.py``.
"""

from services.api.app import create_app
from services.api.service import Service

__all__ = ["Service", "create_app"]
