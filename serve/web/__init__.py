"""The dataset configuration web page and its REST API, as FastAPI routers.

Mount both in the Serve ingress (or any FastAPI app)::

    from serve.web import api_router, router

    app.include_router(router)      # HTML: /, /new, /datasets/..., /static/web/...
    app.include_router(api_router)  # JSON: /api/datasets..., /api/preview
    app.state.config_store = ConfigStore()  # optional; built from DEEPFIX_ETCD otherwise
    app.state.pipeline = ...                # a PreviewPipeline; without it previews are 503

Set ``DEEPFIX_WEB_SECRET`` to one shared random value on every replica (see ``serve.web.csrf``).
"""

from serve.web.csrf import SECRET_ENV
from serve.web.routes import COLLECTION, PREVIEW_MAX_BYTES, PreviewPipeline, api_router, router

__all__ = [
    "COLLECTION",
    "PREVIEW_MAX_BYTES",
    "SECRET_ENV",
    "PreviewPipeline",
    "api_router",
    "router",
]
