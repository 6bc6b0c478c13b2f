"""``nmt serve``: a translation server over HTTP, with batching across requests and a page to try the model.

- ``config.py``: ``ServeConfig`` and ``Limits``, what the command line sets.
- ``engine.py``: the model behind the server (PyTorch checkpoints, or a CTranslate2 export).
- ``worker.py``: the PyTorch model in a decoding process of its own, out of the HTTP process's interpreter lock.
- ``batcher.py``: the queue and the one decoding thread that batches segments of concurrent requests.
- ``api.py``: the JSON the API takes and gives, and how a request's body is read and checked.
- ``app.py``: the FastAPI application: ``/v1/translate``, ``/v1/attention``, ``/health``, ``/metrics``, the page.
- ``metrics.py``: the Prometheus metrics.
- ``page.py`` (with ``page.css`` and ``page.js``): the page at ``/``, drawn with ``nmt attend``'s maps.
- ``server.py``: binding the socket, loading the model, running uvicorn, stopping in order on SIGTERM.
"""
