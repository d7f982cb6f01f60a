"""`genforge serve`: trained runs behind an HTTP API (native /v1/samples and OpenAI-compatible
endpoints) and a web page. FastAPI is imported only here, never by the rest of genforge."""


def require_fastapi():
    """Import FastAPI and uvicorn, or say how to install them (one line, no traceback)."""
    from genforge import GenforgeError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise GenforgeError(f"genforge serve needs FastAPI and uvicorn ({e.name} is missing): "
                            "pip install 'genforge[serve]'") from None
