"""Serving: an OpenAI-compatible server (FastAPI + uvicorn) with a continuous-batching engine."""
